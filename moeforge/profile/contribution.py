"""Per token, the norm of what each routed expert adds to the residual stream (REAP saliency input).

REAP (Lasby et al. 2025, arXiv 2510.13999) scores an expert by the mean, over the tokens routed
to it, of gate weight × ‖expert output‖; DESIGN.md "ESFT, exactly" uses it to size deployment
subsets. A forward hook on each experts module evaluates every routed (token, expert) pair
again, by calling the module itself with single-expert routing and weight 1, so the model's own
expert code (and activation) computes the output and the profiled forward pass stays exactly
the plain one. The cost is one extra pass through the routed experts.

Llama-4 applies the gate to the expert's *input* and runs every expert on every token (unchosen
ones see zeros), so its hook reads ‖expert(gate · x)‖ straight from the module's output at no
extra cost: the same quantity, "the norm of the expert's contribution", for a nonlinear expert.
"""

import logging

import torch

from moeforge.model.families import family_of, moe_layers

log = logging.getLogger(__name__)


class ContributionRecorder:
    """Context manager: hooks every experts module; `pop()` gives {layer: norms [T, E]}.

    norms[t, e] = |gate weight| × ‖output of expert e on token t‖ (float32), and 0 where the router
    did not send token t to expert e. Tokens are flattened batch × sequence, in forward order, as
    RoutingRecorder records them.
    """

    def __init__(self, model):
        self._layers = moe_layers(model)
        self._gate_on_input = family_of(model.config).router_output == "scores"  # Llama-4
        self._handles = []
        self._seen: dict[int, list[torch.Tensor]] = {}

    def __enter__(self) -> "ContributionRecorder":
        for layer in self._layers:
            self._handles.append(layer.experts.register_forward_hook(self._make_hook(layer.index, layer.num_experts)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def pop(self) -> dict[int, torch.Tensor]:
        """Everything recorded since the last pop, tokens concatenated in forward order."""
        seen, self._seen = self._seen, {}
        return {index: torch.cat(parts) for index, parts in seen.items()}

    def _make_hook(self, index: int, num_experts: int):
        def hook(experts, inputs, output):
            with torch.no_grad():
                if self._gate_on_input:
                    norms = output.float().norm(dim=-1).view(num_experts, -1).t()  # [E·T] rows, expert-major
                else:
                    norms = _routed_norms(experts, *inputs[:3], num_experts)
            self._seen.setdefault(index, []).append(norms)

        return hook


def _routed_norms(experts, hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, num_experts: int):
    """[T, E]: |w| × ‖expert(x)‖ for each routed (token, expert), from one call of the experts module.

    Each (token, slot) pair becomes its own row routed to its one expert with weight 1, so the
    module's output row is exactly that expert's output. `experts.forward` bypasses the hooks.
    """
    tokens, k = ids.shape
    rows = hidden.repeat_interleave(k, dim=0)  # [T·k, H]: each token once per slot, in ids.reshape(-1) order
    flat_ids = ids.reshape(-1, 1)
    out = experts.forward(rows, flat_ids, torch.ones(flat_ids.shape, dtype=weights.dtype, device=weights.device))
    norms = out.float().norm(dim=-1).view(tokens, k) * weights.float().abs()
    dense = torch.zeros(tokens, num_experts, dtype=torch.float32, device=norms.device)
    return dense.scatter_(1, ids.long(), norms)
