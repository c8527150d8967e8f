"""The supported MoE families, as data: where each keeps its experts, router and shared experts.

Families differ by data, not by subclass (STYLE.md §3). In transformers 5.x every family stores
routed experts fused; `layout` says how one expert's gate, up and down sit in those tensors
(DESIGN.md "Facts about the models"). A MoE layer is found by looking for the experts module in
each decoder layer, so dense-layer rules (`first_k_dense_replace`, `mlp_only_layers`,
`moe_layers`) never need re-implementing.
"""

from dataclasses import dataclass
from typing import Literal

from torch import nn

from moeforge.errors import ModelError

# fused:       gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I]
# transposed:  gate_up_proj [E, H, 2I] (gate columns first), down_proj [E, I, H]   (Llama-4)
# interleaved: gate_up_proj [E, H, 2I] (gate even, up odd columns), down_proj [E, I, H], with biases (gpt-oss)
Layout = Literal["fused", "transposed", "interleaved"]


@dataclass(frozen=True)
class Family:
    block: str  # decoder-layer attribute that holds the MoE block
    router: str  # MoE-block attribute that holds the router
    layout: Layout
    shared: str | None  # MoE-block attribute that holds the shared experts, if any
    router_output: Literal["indices", "scores"]  # (logits, weights, ids) or Llama-4's (scores [T, E], logits)


FAMILIES: dict[str, Family] = {
    "deepseek_v2": Family(block="mlp", router="gate", layout="fused", shared="shared_experts", router_output="indices"),
    "deepseek_v3": Family(block="mlp", router="gate", layout="fused", shared="shared_experts", router_output="indices"),
    "qwen2_moe": Family(block="mlp", router="gate", layout="fused", shared="shared_expert", router_output="indices"),
    "qwen3_moe": Family(block="mlp", router="gate", layout="fused", shared=None, router_output="indices"),
    "olmoe": Family(block="mlp", router="gate", layout="fused", shared=None, router_output="indices"),
    "mixtral": Family(block="mlp", router="gate", layout="fused", shared=None, router_output="indices"),
    "gpt_oss": Family(block="mlp", router="router", layout="interleaved", shared=None, router_output="indices"),
    "llama4_text": Family(block="feed_forward", router="router", layout="transposed", shared="shared_expert", router_output="scores"),
}


def family_of(config) -> Family:
    """The family of a transformers config; a dense or unknown model_type is a ModelError."""
    model_type = getattr(config, "model_type", None)
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    hint = ""
    if model_type == "llama4":
        hint = " For Llama-4, pass the text config (model_type 'llama4_text')."
    raise ModelError(
        f"model_type {model_type!r} is not a supported Mixture-of-Experts family "
        f"(supported: {', '.join(sorted(FAMILIES))}).{hint} "
        "Dense models have no routed experts to select; use an MoE base model."
    )


@dataclass(frozen=True, eq=False)
class MoeLayer:
    index: int  # absolute decoder-layer index (DeepSeek layer 0 is dense)
    num_experts: int  # routed experts
    top_k: int
    num_shared: int  # shared experts folded into the block (0 if none)
    router: nn.Module
    experts: nn.Module  # the fused experts module
    prefix: str  # state-dict prefix of the block, e.g. "model.layers.3.mlp"


def moe_layers(model) -> list[MoeLayer]:
    """Every MoE layer of a causal LM, in order, by absolute decoder-layer index."""
    family = family_of(model.config)
    layers = []
    for index, decoder_layer in enumerate(model.model.layers):
        block = getattr(decoder_layer, family.block, None)
        experts = getattr(block, "experts", None)
        if experts is None or not hasattr(experts, "gate_up_proj"):
            continue
        router = getattr(block, family.router)
        num_shared = 0
        if family.shared is not None and getattr(block, family.shared, None) is not None:
            num_shared = int(getattr(model.config, "n_shared_experts", 1) or 1)
        layers.append(
            MoeLayer(
                index=index,
                num_experts=int(experts.num_experts),
                top_k=int(router.top_k),
                num_shared=num_shared,
                router=router,
                experts=experts,
                prefix=f"model.layers.{index}.{family.block}",
            )
        )
    if not layers:
        raise ModelError(f"{type(model).__name__} has no MoE layers (model_type {model.config.model_type!r}).")
    return layers
