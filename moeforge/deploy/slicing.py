"""Slicing a MoE checkpoint down to K experts per layer: a standard Hugging Face model of the same family.

Every tensor of a MoE block's experts and router whose first dimension is the expert count is
indexed by the kept ids (gate_up_proj, down_proj and their biases, the router's weight and bias,
DeepSeek-V3's score-correction bias), so kept expert j sits at new position j with its router row;
the config's expert count is set to K. What that does to routing depends on the family's router
(`ROUTERS`): a router that renormalises over the chosen experts, or scores each expert alone, gives
the kept experts the gates the full model gives them (only the choice is restricted, as in exact
routing); a softmax over all experts without renormalisation loses the pruned experts' mass from
its denominator, which no config constant corrects per token (DESIGN.md "Deployment").
"""

from dataclasses import dataclass
from typing import Literal

import torch

from moeforge.errors import ModelError
from moeforge.model.families import family_of, moe_layers

EXPERT_COUNT_KEY = {"deepseek_v2": "n_routed_experts", "deepseek_v3": "n_routed_experts", "qwen2_moe": "num_experts",
                    "qwen3_moe": "num_experts", "olmoe": "num_experts", "mixtral": "num_local_experts",
                    "gpt_oss": "num_local_experts", "llama4_text": "num_local_experts"}
Routing = Literal["exact", "denominator", "groups"]


@dataclass(frozen=True)
class RouterKind:
    """What slicing does to this model's routing: `exact` (gates unchanged; only the choice is restricted),
    `denominator` (softmax over all experts, not renormalised: every kept gate is divided by the kept mass),
    `groups` (DeepSeek-V3: group-limited choice, which K experts no longer split into the same groups)."""

    routing: Routing
    scale_key: str | None  # a config constant multiplying every gate, the one correction a standard export can carry


def router_kind(config) -> RouterKind:
    model_type = config.model_type
    family_of(config)
    if model_type == "deepseek_v2":
        return RouterKind("denominator", "routed_scaling_factor")
    if model_type in ("qwen2_moe", "qwen3_moe", "olmoe"):
        return RouterKind("exact" if getattr(config, "norm_topk_prob", False) else "denominator", None)
    if model_type == "deepseek_v3":
        groups = int(getattr(config, "n_group", 1) or 1)
        return RouterKind("groups" if groups > 1 else "exact", "routed_scaling_factor")
    return RouterKind("exact", None)  # mixtral, gpt_oss: softmax over the top-k only; llama4: a sigmoid per expert


def sliced_checkpoint(model, kept: dict[int, tuple[int, ...]]) -> tuple[object, dict[str, torch.Tensor]]:
    """(config, state dict) of `model` with only the `kept` experts of each MoE layer, renumbered 0..K−1."""
    layers = moe_layers(model)
    counts = {len(kept.get(layer.index, ())) for layer in layers}
    if len(counts) != 1:
        raise ModelError(f"every MoE layer must keep the same number of experts (stock runtimes need it); got {sorted(counts)}.")
    k = counts.pop()
    problems = [f"layer {layer.index} keeps {len(kept[layer.index])} < top_k {layer.top_k}" for layer in layers if k < layer.top_k]
    problems += [f"layer {layer.index}: expert ids {sorted(set(kept[layer.index]) - set(range(layer.num_experts)))} do not exist"
                 for layer in layers if set(kept[layer.index]) - set(range(layer.num_experts))]
    problems += [f"layer {layer.index} names an expert twice" for layer in layers if len(set(kept[layer.index])) != k]
    if problems:
        raise ModelError("cannot slice the experts: " + "; ".join(problems) + ".")
    family = family_of(model.config)
    state = {}
    prefixes = {layer.prefix: layer for layer in layers}
    for name, tensor in model.state_dict().items():
        layer = next((prefixes[p] for p in prefixes if name.startswith(f"{p}.experts.") or name.startswith(f"{p}.{family.router}.")), None)
        if layer is not None and tensor.dim() >= 1 and tensor.shape[0] == layer.num_experts:
            tensor = tensor[list(kept[layer.index])]
        state[name] = tensor.detach().clone().contiguous()
    config = model.config.__class__.from_dict(model.config.to_dict())
    setattr(config, EXPERT_COUNT_KEY[config.model_type], k)
    if config.model_type == "deepseek_v3":
        config.n_group, config.topk_group = 1, 1  # the groups of E experts do not carry over to K of them
    return config, state


def build_sliced(model, kept: dict[int, tuple[int, ...]]):
    """The sliced model itself, its weights loaded strictly."""
    from transformers import AutoModelForCausalLM

    config, state = sliced_checkpoint(model, kept)
    sliced = AutoModelForCausalLM.from_config(config)
    missing, unexpected = sliced.load_state_dict(state, strict=False)
    missing = [m for m in missing if m not in _tied(sliced)]
    if missing or unexpected:
        raise ModelError(f"the sliced checkpoint does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    return sliced.eval()


def _tied(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return set(keys) if not isinstance(keys, dict) else set(keys)
