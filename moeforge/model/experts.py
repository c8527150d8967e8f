"""Read and write one routed expert's weights by (layer, expert), whatever the fused layout.

The layout of expert weights sits behind this one accessor (STYLE.md §9): callers always see an
expert in `nn.Linear` orientation, as Hugging Face's per-expert checkpoint keys store it:
gate and up `[I, H]`, down `[H, I]`.
"""

from dataclasses import dataclass

import torch

from moeforge.errors import ModelError
from moeforge.model.families import MoeLayer, family_of, moe_layers


@dataclass(frozen=True, order=True)
class ExpertSlot:
    layer: int  # absolute decoder-layer index (DeepSeek layer 0 is dense)
    expert: int  # routed-expert index within the layer


@dataclass(frozen=True, eq=False)
class ExpertWeights:
    gate: torch.Tensor  # [I, H]
    up: torch.Tensor  # [I, H]
    down: torch.Tensor  # [H, I]
    gate_bias: torch.Tensor | None = None  # [I]   (gpt-oss only)
    up_bias: torch.Tensor | None = None  # [I]
    down_bias: torch.Tensor | None = None  # [H]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The non-empty parts by their per-expert checkpoint suffix, e.g. 'gate_proj.weight'."""
        parts = {
            "gate_proj.weight": self.gate,
            "up_proj.weight": self.up,
            "down_proj.weight": self.down,
            "gate_proj.bias": self.gate_bias,
            "up_proj.bias": self.up_bias,
            "down_proj.bias": self.down_bias,
        }
        return {name: t for name, t in parts.items() if t is not None}


def find_layer(model, slot: ExpertSlot) -> MoeLayer:
    """The MoE layer holding `slot`; a layer or expert that does not exist is a ModelError."""
    layers = {layer.index: layer for layer in moe_layers(model)}
    layer = layers.get(slot.layer)
    if layer is None:
        raise ModelError(
            f"layer {slot.layer} is not a MoE layer of this {model.config.model_type} model "
            f"(MoE layers: {_ranges(sorted(layers))})."
        )
    if not 0 <= slot.expert < layer.num_experts:
        raise ModelError(
            f"expert {slot.expert} does not exist in layer {slot.layer} "
            f"(it has {layer.num_experts} routed experts, 0..{layer.num_experts - 1})."
        )
    return layer


def read_expert(model, slot: ExpertSlot) -> ExpertWeights:
    """A copy of one routed expert's weights, in nn.Linear orientation."""
    layer = find_layer(model, slot)
    layout = family_of(model.config).layout
    ex, e = layer.experts, slot.expert
    with torch.no_grad():
        if layout == "fused":
            inter = ex.down_proj.shape[-1]
            gate_up = ex.gate_up_proj[e]  # [2I, H], gate rows first
            return ExpertWeights(gate_up[:inter].clone(), gate_up[inter:].clone(), ex.down_proj[e].clone())
        gate_up = ex.gate_up_proj[e]  # [H, 2I]
        down = ex.down_proj[e].t().clone()  # [I, H] stored → [H, I]
        if layout == "transposed":
            inter = down.shape[-1]
            return ExpertWeights(gate_up[:, :inter].t().clone(), gate_up[:, inter:].t().clone(), down)
        bias = ex.gate_up_proj_bias[e]  # [2I], interleaved like the weights
        return ExpertWeights(
            gate_up[:, 0::2].t().clone(),
            gate_up[:, 1::2].t().clone(),
            down,
            gate_bias=bias[0::2].clone(),
            up_bias=bias[1::2].clone(),
            down_bias=ex.down_proj_bias[e].clone(),
        )


def write_expert(model, slot: ExpertSlot, weights: ExpertWeights) -> None:
    """Overwrite one routed expert in place; shapes must match exactly, else nothing is written."""
    problems = shape_problems(read_expert(model, slot), weights)
    if problems:
        raise ModelError(f"cannot write expert (layer {slot.layer}, expert {slot.expert}): " + "; ".join(problems) + ".")
    layer = find_layer(model, slot)
    layout = family_of(model.config).layout
    ex, e = layer.experts, slot.expert
    with torch.no_grad():
        if layout == "fused":
            inter = ex.down_proj.shape[-1]
            ex.gate_up_proj[e, :inter].copy_(weights.gate)
            ex.gate_up_proj[e, inter:].copy_(weights.up)
            ex.down_proj[e].copy_(weights.down)
        elif layout == "transposed":
            inter = weights.gate.shape[0]
            ex.gate_up_proj[e, :, :inter].copy_(weights.gate.t())
            ex.gate_up_proj[e, :, inter:].copy_(weights.up.t())
            ex.down_proj[e].copy_(weights.down.t())
        else:
            ex.gate_up_proj[e, :, 0::2].copy_(weights.gate.t())
            ex.gate_up_proj[e, :, 1::2].copy_(weights.up.t())
            ex.down_proj[e].copy_(weights.down.t())
            ex.gate_up_proj_bias[e, 0::2].copy_(weights.gate_bias)
            ex.gate_up_proj_bias[e, 1::2].copy_(weights.up_bias)
            ex.down_proj_bias[e].copy_(weights.down_bias)


def expert_key(model, slot: ExpertSlot, part: str) -> str:
    """The Hugging Face per-expert checkpoint key, e.g. 'model.layers.3.mlp.experts.7.gate_proj.weight'."""
    return f"{find_layer(model, slot).prefix}.experts.{slot.expert}.{part}"


def shape_problems(want: ExpertWeights, have: ExpertWeights) -> list[str]:
    """Every part missing, extra or mis-shaped in `have` compared with `want` (empty when they match)."""
    problems = []
    w, h = want.tensors(), have.tensors()
    for name in sorted(set(h) | set(w)):
        if name not in h:
            problems.append(f"{name} is missing")
        elif name not in w:
            problems.append(f"{name} is not part of this model's experts")
        elif tuple(h[name].shape) != tuple(w[name].shape):
            problems.append(f"{name} has shape {tuple(h[name].shape)}, expected {tuple(w[name].shape)}")
    return problems


def _ranges(indices: list[int]) -> str:
    """'1-5, 7' for [1, 2, 3, 4, 5, 7]."""
    out, start = [], None
    for i, v in enumerate(indices):
        if start is None:
            start = v
        if i + 1 == len(indices) or indices[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out) or "none"
