"""Capture, per token and MoE layer, the experts the router chose and their gate weights.

The choice is read from a forward hook on each router, never by recomputing top-k from logits
(DeepSeek-V3 adds a score-correction bias and group limits; DESIGN.md "Facts about the models").
"""

from dataclasses import dataclass

import torch

from moeforge.model.families import family_of, moe_layers


@dataclass(frozen=True, eq=False)
class LayerRouting:
    ids: torch.Tensor  # [T, k] int64, chosen routed experts per token
    weights: torch.Tensor  # [T, k] float32, the gate weight the model applies to each choice
    logits: torch.Tensor | None = None  # [T, E] router logits (kept, with autograd, only when asked)


@dataclass(frozen=True, eq=False)
class RoutingTrace:
    layers: dict[int, LayerRouting]  # absolute decoder-layer index → routing of every token seen


class RoutingRecorder:
    """Context manager: hooks every router, records what it chose until `pop()` is called.

    `keep_logits=True` also keeps the router logits with their autograd graph, for a
    load-balancing loss during training.
    """

    def __init__(self, model, *, keep_logits: bool = False):
        self._layers = moe_layers(model)
        self._scores_output = family_of(model.config).router_output == "scores"
        self._keep_logits = keep_logits
        self._handles = []
        self._seen: dict[int, list[LayerRouting]] = {}

    def __enter__(self) -> "RoutingRecorder":
        for layer in self._layers:
            hook = self._make_hook(layer.index, layer.top_k)
            self._handles.append(layer.router.register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def pop(self) -> RoutingTrace:
        """Everything recorded since the last pop, tokens concatenated in forward order."""
        layers = {}
        for index, parts in self._seen.items():
            logits = None
            if parts[0].logits is not None:
                logits = torch.cat([p.logits for p in parts])
            layers[index] = LayerRouting(
                ids=torch.cat([p.ids for p in parts]),
                weights=torch.cat([p.weights for p in parts]),
                logits=logits,
            )
        self._seen = {}
        return RoutingTrace(layers=layers)

    def _make_hook(self, index: int, top_k: int):
        def hook(_module, _inputs, output):
            if self._scores_output:  # Llama-4: (scores [T, E], logits); unchosen scores are exactly 0
                scores, logits = output
                weights, ids = scores.detach().topk(top_k, dim=-1)
            else:
                logits, weights, ids = output
                weights = weights.detach()
            routing = LayerRouting(
                ids=ids.detach().reshape(-1, top_k).long(),
                weights=weights.reshape(-1, top_k).float(),
                logits=logits.reshape(ids.numel() // top_k, -1) if self._keep_logits else None,
            )
            self._seen.setdefault(index, []).append(routing)

        return hook
