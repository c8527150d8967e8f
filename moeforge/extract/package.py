"""Miner packages in four memory modes, and exactly how many bytes each one holds.

- `full`: the frozen model plus the trainable slice; trains exactly what is deployed.
- `quantized`: frozen routed experts in int8 (one float32 scale per row), the trainable experts
  in full precision.
- `subset`: the backbone plus only the experts covering a share of the domain's routing mass
  (and the trainable ones); routing restricted to them with the full softmax denominator.
- `offload`: every routed expert in host memory, only the routed ones brought to the device per
  layer and micro-batch (`offload.py`); trains exactly what is deployed, like `full`.

Bytes held are counted tensor by tensor over what the miner's process holds: the model's
parameters and buffers plus its own float32 copy of the trainable slice (the trainer's master
weights). The same rules run on the
meta device to plan the real DeepSeek-V2-Lite without allocating it.
"""

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import AutoModelForCausalLM

from moeforge.errors import ConfigError
from moeforge.extract.modules import quantize_experts
from moeforge.extract.offload import offload_experts
from moeforge.extract.subset import restrict_to_subset
from moeforge.model.experts import ExpertSlot
from moeforge.model.families import moe_layers

MinerMode = Literal["full", "quantized", "subset", "offload"]
MODES: tuple[MinerMode, ...] = ("full", "quantized", "subset", "offload")


@dataclass(frozen=True)
class MemoryPlan:
    mode: MinerMode
    bytes_held: int  # model tensors + the trainable slice
    full_bytes: int  # the unreduced model, for the fraction

    @property
    def fraction_of_full(self) -> float:
        return self.bytes_held / self.full_bytes


def reduce_for_mode(model, mode: MinerMode, trainable: list[ExpertSlot], kept: dict[int, list[int]] | None = None, *,
                    prefetch: bool = False) -> None:
    """Turn a full model into what a miner of `mode` holds, in place.

    `kept` (subset mode) lists the experts to hold per layer; the trainable experts are always added.
    `prefetch` (offload mode): guess each next layer's experts while one computes (offload.py).
    """
    if mode not in MODES:
        raise ConfigError(f"unknown miner mode {mode!r} (modes: {', '.join(MODES)}).")
    by_layer: dict[int, list[int]] = {}
    for slot in trainable:
        by_layer.setdefault(slot.layer, []).append(slot.expert)
    if mode == "quantized":
        quantize_experts(model, by_layer)
    elif mode == "subset":
        if kept is None:
            raise ConfigError("subset mode needs the experts to keep per layer (a coverage selection).")
        restrict_to_subset(model, {l: sorted(set(kept.get(l, [])) | set(by_layer.get(l, []))) for l in kept})
    elif mode == "offload":
        offload_experts(model, prefetch=prefetch)


def held_bytes(model) -> int:
    """Bytes of every distinct parameter and buffer the model holds."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.device.type, t.data_ptr()) if not t.is_meta else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def slice_bytes(model, trainable: list[ExpertSlot]) -> int:
    """Bytes of the miner's own copy of the trainable experts: float32 master weights."""
    layers = {layer.index: layer for layer in moe_layers(model)}
    return sum(4 * sum(p[0].numel() for p in layers[s.layer].experts.parameters(recurse=False)) for s in trainable)


def plan_memory(config, mode: MinerMode, *, trainable_per_layer: int, kept_per_layer: int | None = None,
                dtype: torch.dtype = torch.bfloat16) -> MemoryPlan:
    """Bytes a miner of `mode` holds for `config`'s model, computed on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    layers = moe_layers(model)
    trainable = [ExpertSlot(l.index, e) for l in layers for e in range(trainable_per_layer)]
    full = held_bytes(model)
    per_slice = slice_bytes(model, trainable)
    kept = None
    if mode == "subset":
        if kept_per_layer is None:
            raise ConfigError("plan_memory(mode='subset') needs kept_per_layer.")
        kept = {l.index: list(range(kept_per_layer)) for l in layers}
    reduce_for_mode(model, mode, trainable, kept)
    return MemoryPlan(mode=mode, bytes_held=held_bytes(model) + per_slice, full_bytes=full + per_slice)
