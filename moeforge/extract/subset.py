"""A miner's subset model: the backbone plus only the experts covering most of the domain's routing.

Routing is restricted to the kept experts without changing how they are weighted: the softmax
is taken over *all* router rows (the router is tiny and fully held), so a kept expert's gate
value is exactly what the full model gives it; only the choice among experts is restricted
(DESIGN.md "ESFT, exactly", on V2-Lite/OLMoE routers that do not renormalise top-k). The gap
to the full model is measured, not assumed.
"""

import torch
import torch.nn.functional as F
from torch import nn

from moeforge.errors import ModelError
from moeforge.extract.modules import SubsetExperts
from moeforge.model.families import family_of, moe_layers

_SOFTMAX_TOPK = ("deepseek_v2", "qwen2_moe", "qwen3_moe", "olmoe", "mixtral")


class RestrictedRouter(nn.Module):
    """Softmax-then-top-k routing over the kept experts, with the full softmax denominator."""

    def __init__(self, router: nn.Module, kept: list[int], *, renormalise: bool, scale: float):
        super().__init__()
        self.router = router
        self.top_k = router.top_k
        self.num_experts = router.num_experts if hasattr(router, "num_experts") else router.weight.shape[0]
        mask = torch.zeros(self.num_experts, dtype=torch.bool)
        mask[kept] = True
        self.register_buffer("kept", mask, persistent=False)
        self.renormalise, self.scale = renormalise, scale
        if int(mask.sum()) < self.top_k:
            raise ModelError(f"a subset must keep at least top_k={self.top_k} experts per layer (kept {int(mask.sum())}).")

    @property
    def weight(self) -> torch.Tensor:
        return self.router.weight

    def forward(self, hidden_states):
        hidden = hidden_states.reshape(-1, self.router.weight.shape[1])
        logits = F.linear(hidden.float(), self.router.weight.float())  # [T, E]
        probs = logits.softmax(dim=-1)
        weights, ids = probs.masked_fill(~self.kept, -1.0).topk(self.top_k, dim=-1)
        if self.renormalise:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, (weights * self.scale).to(hidden_states.dtype), ids


def restrict_to_subset(model, kept: dict[int, list[int]]) -> None:
    """Replace each MoE layer's experts by the kept ones and restrict its router, in place."""
    config = model.config
    if config.model_type not in _SOFTMAX_TOPK or getattr(config, "topk_method", "greedy") != "greedy":
        raise ModelError(
            f"subset mode needs a softmax-then-top-k router ({', '.join(_SOFTMAX_TOPK)} with greedy top-k); "
            f"this model is {config.model_type}."
        )
    family = family_of(config)
    renormalise = config.model_type == "mixtral" or bool(getattr(config, "norm_topk_prob", False))
    scale = float(getattr(config, "routed_scaling_factor", 1.0) or 1.0)
    layers = moe_layers(model)
    missing = [layer.index for layer in layers if not kept.get(layer.index)]
    if missing:
        raise ModelError(f"the subset keeps no experts in MoE layers {missing}; every MoE layer needs at least top_k.")
    short = [f"layer {l.index} keeps {len(set(kept[l.index]))}" for l in layers if len(set(kept[l.index])) < l.top_k]
    if short:
        raise ModelError(f"a subset must keep at least top_k={layers[0].top_k} experts per layer ({'; '.join(short)}).")
    for layer in layers:
        block = getattr(model.model.layers[layer.index], family.block)
        setattr(block, "experts", SubsetExperts(layer.experts, kept[layer.index]))
        setattr(block, family.router, RestrictedRouter(layer.router, kept[layer.index], renormalise=renormalise, scale=scale))
