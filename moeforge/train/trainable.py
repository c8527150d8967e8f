"""The selected routed experts as their own parameters, everything else frozen.

Transformers v5 fuses a layer's experts into 3-D tensors, so one expert cannot be frozen with
`requires_grad`, and masking its gradient is not enough: AdamW's decoupled weight decay still
moves the masked slices (DESIGN.md "Facts about the models"). Instead every model parameter is
frozen, and each MoE layer with selected experts gets a drop-in experts module:

- the original fused module still computes every *unselected* expert: it is called with the
  router's own choices, the selected experts' gate weights set to 0, so they add nothing;
- each selected expert is computed from new `nn.Parameter`s on exactly the tokens routed to it,
  weighted by its gate weight, and added: stacked and run through the model class's own experts
  forward (grouped matrix products where the config says `grouped_mm`, as transformers does for
  every MoE layer) when the fused module has one, one expert at a time otherwise.

The routing is untouched (ESFT trains under the base model's native routing), so the wrapped
model computes the same function as the original until its new parameters move. For a 16-bit
model the new parameters are float32 master copies (cast to the activations' dtype in the
forward pass): an AdamW step at a fine-tuning learning rate is below bfloat16's resolution.
"""

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from moeforge.errors import ConfigError, ModelError
from moeforge.model.expert_call import call_with, can_call, weightless
from moeforge.model.experts import ExpertSlot, ExpertWeights, find_layer, read_expert, write_expert
from moeforge.model.families import FAMILIES, family_of
from moeforge.model.slices import ExpertSlice

log = logging.getLogger(__name__)

# gpt-oss interleaves gate/up, adds biases and clamps its activation; Llama-4's experts take
# (hidden, routing scores) instead of (hidden, top-k ids, top-k weights). Neither is wrapped yet.
TRAINABLE_FAMILIES = tuple(sorted(name for name, fam in FAMILIES.items() if fam.layout == "fused"))


class SplitExperts(nn.Module):
    """Drop-in experts module: the fused original for unselected experts, own parameters for selected ones."""

    def __init__(self, fused: nn.Module, selected: dict[int, ExpertWeights]):
        super().__init__()
        self.fused = fused
        self.num_experts = fused.num_experts
        self.act_fn = fused.act_fn  # ACT2FN[config.hidden_act], as the fused module applies it
        self.selected = nn.ParameterDict(
            {f"{e}_{part}": getattr(w, part) for e, w in selected.items() for part in ("gate", "up", "down")}
        )
        self.expert_ids = sorted(selected)
        self.register_buffer("_ids", torch.tensor(self.expert_ids, dtype=torch.long), persistent=False)
        local = torch.full((self.num_experts,), -1, dtype=torch.long)
        local[self._ids] = torch.arange(len(self.expert_ids))
        self.register_buffer("_local", local, persistent=False)  # global expert id → its place among the selected
        # the fused module's class forward without weights, when it has one (transformers' or the offloaded experts');
        # None: the selected experts are computed one by one (quantized and subset experts). Not a submodule.
        self.__dict__["template"] = weightless(fused) if can_call(fused) else getattr(fused, "template", None)


    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        # hidden_states [T, H]; top_k_index, top_k_weights [T, k]
        chosen = torch.isin(top_k_index, self._ids.to(top_k_index.device))
        out = self.fused(hidden_states, top_k_index, top_k_weights.masked_fill(chosen, 0.0))
        if self.template is not None:  # the selected experts stacked, through the class's own (grouped) experts forward
            dtype = hidden_states.dtype
            gate_up = torch.stack([torch.cat([self.selected[f"{e}_gate"], self.selected[f"{e}_up"]]) for e in self.expert_ids])
            down = torch.stack([self.selected[f"{e}_down"] for e in self.expert_ids])
            token, k_pos = torch.where(chosen)  # the (token, slot) pairs routed to a selected expert
            local = self._local.to(top_k_index.device)[top_k_index[token, k_pos]].to(top_k_index.dtype)
            own = call_with(self.template, gate_up.to(dtype), down.to(dtype), hidden_states[token],
                            local.unsqueeze(1), top_k_weights[token, k_pos].unsqueeze(1))
            return out.index_add(0, token, own.to(out.dtype))
        for e in self.expert_ids:
            token_idx, k_pos = torch.where(top_k_index == e)
            x = hidden_states[token_idx]  # [t, H]; empty when no token chose e (its grads are then 0)
            gate, up, down = (self.selected[f"{e}_{part}"].to(x.dtype) for part in ("gate", "up", "down"))
            y = F.linear(self.act_fn(F.linear(x, gate)) * F.linear(x, up), down)  # [t, H]
            y = y * top_k_weights[token_idx, k_pos, None]
            out = out.index_add(0, token_idx, y.to(out.dtype))
        return out


@dataclass(frozen=True, eq=False)
class TrainableExperts:
    """The selected experts' parameters while attached to a model, and what detaching restores."""

    model_type: str
    weights: dict[ExpertSlot, ExpertWeights]  # each part an nn.Parameter, nn.Linear orientation (float32 for 16-bit models)
    dtype: torch.dtype  # the model's expert weights' dtype
    _blocks: dict[int, tuple[nn.Module, nn.Module]] = field(repr=False)  # layer → (MoE block, original experts)
    _requires_grad: dict[str, bool] = field(repr=False)  # every model parameter's flag before attaching

    @property
    def slots(self) -> list[ExpertSlot]:
        return sorted(self.weights)

    def parameters(self) -> list[nn.Parameter]:
        """The trainable tensors, in slot order, gate/up/down each."""
        return [getattr(self.weights[s], part) for s in self.slots for part in ("gate", "up", "down")]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def to_slice(self, base_fingerprint: str) -> ExpertSlice:
        """A copy of the experts' current values in the model's dtype (what merging would write), as an `experts` slice."""
        with torch.no_grad():
            weights = {
                s: ExpertWeights(*(t.detach().to(self.dtype, copy=True) for t in (w.gate, w.up, w.down)))
                for s, w in self.weights.items()
            }
        return ExpertSlice(kind="experts", model_type=self.model_type, base_fingerprint=base_fingerprint, weights=weights)


def attach_trainable(model, slots: list[ExpertSlot]) -> TrainableExperts:
    """Freeze every parameter of `model` and make the experts in `slots` trainable parameters.

    Every slot is checked before anything changes: an unknown layer or expert, or a family
    whose experts cannot be wrapped, is a ModelError and leaves the model untouched.
    """
    family = family_of(model.config)
    model_type = model.config.model_type
    if model_type not in TRAINABLE_FAMILIES:
        raise ModelError(
            f"training selected experts is not supported for {model_type!r} ({family.layout} expert layout); "
            f"supported families: {', '.join(TRAINABLE_FAMILIES)}. Use train_full or train_lora for this model."
        )
    slots = sorted(set(slots))
    if not slots:
        raise ConfigError("no experts selected to train: pass at least one (layer, expert) slot.")
    problems = []
    for slot in slots:
        try:
            find_layer(model, slot)
        except ModelError as exc:
            problems.append(str(exc))
    if problems:
        raise ModelError(f"cannot train the selected experts (nothing changed): {' '.join(problems)}")
    blocks = {}
    for slot in slots:
        layer = find_layer(model, slot)
        if isinstance(layer.experts, SplitExperts):
            raise ModelError(f"layer {slot.layer} already has trainable experts attached; detach them first.")
        block = model.get_submodule(layer.prefix)
        blocks.setdefault(slot.layer, (block, layer.experts))

    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    base = {slot: read_expert(model, slot) for slot in slots}
    device = model.get_input_embeddings().weight.device  # offloaded experts are read from host memory
    weights = {slot: _as_parameters(w, device) for slot, w in base.items()}
    for p in model.parameters():
        p.requires_grad_(False)
    for index, (block, fused) in blocks.items():
        selected = {s.expert: w for s, w in weights.items() if s.layer == index}
        block.experts = SplitExperts(fused, selected)
    trainable = TrainableExperts(
        model_type=model_type, weights=weights, dtype=base[slots[0]].gate.dtype, _blocks=blocks, _requires_grad=requires_grad
    )
    log.info("attached %d trainable experts in %d layers (%d parameters)", len(slots), len(blocks), trainable.num_params())
    return trainable


def detach_trainable(model, trainable: TrainableExperts, *, merge: bool) -> None:
    """Put the original experts modules back; with `merge`, write the trained experts into them first."""
    for index, (block, fused) in trainable._blocks.items():
        if not (isinstance(block.experts, SplitExperts) and block.experts.fused is fused):
            raise ModelError(f"layer {index}: these trainable experts are not attached to this model (detached twice?).")
    for block, fused in trainable._blocks.values():
        block.experts = fused
    if merge:
        with torch.no_grad():
            for slot, w in trainable.weights.items():
                write_expert(model, slot, ExpertWeights(w.gate.detach(), w.up.detach(), w.down.detach()))
    for name, p in model.named_parameters():
        p.requires_grad_(trainable._requires_grad.get(name, p.requires_grad))


def _as_parameters(w: ExpertWeights, device: torch.device) -> ExpertWeights:
    """Trainable copies on `device`; float32 masters for 16-bit weights, the weights' own dtype otherwise."""
    dtype = torch.float32 if w.gate.element_size() < 4 else w.gate.dtype
    return ExpertWeights(*(nn.Parameter(t.to(device, dtype)) for t in (w.gate, w.up, w.down)))
