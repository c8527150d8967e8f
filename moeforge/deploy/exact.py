"""moeforge's own runtime for an export: routing exactly as the unpruned model, from the full router rows.

A sliced softmax router without renormalisation divides each kept gate by the kept experts' share
of the token's probability (slicing.py). The export's sidecar keeps every original router row, so
this runtime takes the softmax over all of them, keeps the kept experts' probabilities as they
are, picks the top-k among those, and hands the experts their new (renumbered) ids: the choice is
restricted, the weights are not (the way extract/subset.py restricts a miner's subset in memory).
"""

import torch
import torch.nn.functional as F
from torch import nn

from moeforge.errors import ModelError
from moeforge.model.families import family_of, moe_layers


class ExactRouter(nn.Module):
    """Softmax over the full router rows, top-k among the kept experts, ids in the export's numbering."""

    def __init__(self, full_weight: torch.Tensor, kept: tuple[int, ...], *, top_k: int, renormalise: bool, scale: float):
        super().__init__()
        self.register_buffer("full_weight", full_weight.detach().clone(), persistent=False)  # [E, H], original order
        self.register_buffer("kept", torch.tensor(kept, dtype=torch.long), persistent=False)  # new id j → original id
        self.top_k, self.renormalise, self.scale = top_k, renormalise, scale

    @property
    def weight(self) -> torch.Tensor:
        return self.full_weight[self.kept]

    def forward(self, hidden_states):
        hidden = hidden_states.reshape(-1, self.full_weight.shape[1])
        logits = F.linear(hidden.float(), self.full_weight.float())  # [T, E]
        probs = logits.softmax(dim=-1)[:, self.kept]  # [T, K]: the full model's probabilities of the kept experts
        weights, ids = probs.topk(self.top_k, dim=-1)
        if self.renormalise:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits[:, self.kept], (weights * self.scale).to(hidden_states.dtype), ids


SOFTMAX_ROUTERS = ("deepseek_v2", "qwen2_moe", "qwen3_moe", "olmoe", "mixtral")


def route_exactly(model, full_rows: dict[int, torch.Tensor], kept: dict[int, tuple[int, ...]], *, scale: float) -> None:
    """Give each MoE layer of the sliced `model` an ExactRouter over its layer's full router rows, in place.
    `scale`: the unpruned model's gate multiplier (its routed_scaling_factor; 1 for families without one)."""
    config = model.config
    if config.model_type not in SOFTMAX_ROUTERS:
        raise ModelError(f"exact routing from full router rows is for softmax-then-top-k routers ({', '.join(SOFTMAX_ROUTERS)}); "
                         f"a {config.model_type} export routes as the unpruned model already, or is approximate by design.")
    family = family_of(config)
    renormalise = config.model_type == "mixtral" or bool(getattr(config, "norm_topk_prob", False))
    for layer in moe_layers(model):
        if layer.index not in full_rows or layer.index not in kept:
            raise ModelError(f"the sidecar has no router rows for MoE layer {layer.index}.")
        block = getattr(model.model.layers[layer.index], family.block)
        setattr(block, family.router, ExactRouter(full_rows[layer.index], kept[layer.index], top_k=layer.top_k,
                                                  renormalise=renormalise, scale=scale))
