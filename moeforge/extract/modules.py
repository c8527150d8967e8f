"""Reduced routed-expert modules a miner can hold: int8 experts, or only a subset of experts.

Both keep the experts module's interface (`forward(hidden [T,H], top_k_index [T,k],
top_k_weights [T,k])`, `num_experts`, and `gate_up_proj[e]` / `down_proj[e]` indexed by the
global expert id), so routing hooks, `read_expert` and expert-only training work on them
unchanged. Fused-layout families only (gate_up `[E, 2I, H]`, gate rows first).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from moeforge.errors import ModelError


def run_experts(
    hidden: torch.Tensor,  # [T, H]
    top_k_index: torch.Tensor,  # [T, k] global expert ids
    top_k_weights: torch.Tensor,  # [T, k]
    weights_of: Callable[[int], tuple[torch.Tensor, torch.Tensor]],  # e → (gate_up [2I, H], down [H, I])
    act_fn: Callable,
) -> torch.Tensor:
    """Σ_k w_k · expert_k(x) computed expert by expert (the HF eager computation)."""
    out = torch.zeros_like(hidden)
    for e in torch.unique(top_k_index).tolist():
        token, slot = torch.where(top_k_index == e)
        gate_up, down = weights_of(e)
        gate, up = F.linear(hidden[token], gate_up.to(hidden.dtype)).chunk(2, dim=-1)
        y = F.linear(act_fn(gate) * up, down.to(hidden.dtype))
        out.index_add_(0, token, (y * top_k_weights[token, slot, None]).to(out.dtype))
    return out


class _Dequantized:
    """`q[e]` → expert e's weights (exact if held exactly, else dequantized); what `read_expert` indexes."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, exact: torch.Tensor, exact_index: torch.Tensor):
        self._q, self._scale, self._exact, self._exact_index = q, scale, exact, exact_index
        self.shape = q.shape

    def __getitem__(self, e):
        if isinstance(e, tuple):  # write_expert indexes [e, rows]: writing into int8 would be lost
            raise ModelError("quantized experts are frozen: apply slices and deltas to the full-precision model.")
        i = int(self._exact_index[e])
        return self._exact[i] if i >= 0 else self._q[e].float() * self._scale[e]


class QuantizedExperts(nn.Module):
    """Routed experts held in int8 with one float32 scale per output row, except `exact` experts.

    The experts a miner trains stay in full precision (`exact`); every other expert is frozen
    and held in int8.
    """

    def __init__(self, experts: nn.Module, exact: list[int] = ()):
        super().__init__()
        self.num_experts = experts.num_experts
        self.act_fn = experts.act_fn
        exact = sorted(set(exact))
        index = torch.full((self.num_experts,), -1, dtype=torch.long)
        index[exact] = torch.arange(len(exact))
        self.register_buffer("exact_index", index, persistent=False)
        self.register_buffer("exact_gate_up", experts.gate_up_proj.detach()[exact].clone())  # [S, 2I, H]
        self.register_buffer("exact_down", experts.down_proj.detach()[exact].clone())  # [S, H, I]
        q, s = quantize_rows(experts.gate_up_proj.detach())
        self.register_buffer("gate_up_q", q)  # [E, 2I, H] int8
        self.register_buffer("gate_up_scale", s)  # [E, 2I, 1] float32
        q, s = quantize_rows(experts.down_proj.detach())
        self.register_buffer("down_q", q)  # [E, H, I] int8
        self.register_buffer("down_scale", s)  # [E, H, 1] float32

    @property
    def gate_up_proj(self) -> _Dequantized:
        return _Dequantized(self.gate_up_q, self.gate_up_scale, self.exact_gate_up, self.exact_index)

    @property
    def down_proj(self) -> _Dequantized:
        return _Dequantized(self.down_q, self.down_scale, self.exact_down, self.exact_index)

    def forward(self, hidden, top_k_index, top_k_weights):
        gate_up, down = self.gate_up_proj, self.down_proj
        return run_experts(hidden, top_k_index, top_k_weights, lambda e: (gate_up[e], down[e]), self.act_fn)


def quantize_experts(model, exact: dict[int, list[int]]) -> None:
    """Hold every MoE layer's experts in int8, except `exact[layer]`, in place (fused families)."""
    from moeforge.model.families import family_of, moe_layers

    family = family_of(model.config)
    if family.layout != "fused":
        raise ModelError(f"quantized mode supports fused-layout families; {model.config.model_type} is {family.layout}.")
    for layer in moe_layers(model):
        block = getattr(model.model.layers[layer.index], family.block)
        block.experts = QuantizedExperts(layer.experts, exact.get(layer.index, []))


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row (last dim is the input): w ≈ q · scale."""
    scale = w.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127.0
    if w.is_meta:
        return torch.empty(w.shape, dtype=torch.int8, device="meta"), scale
    q = torch.round(w.float() / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


class _Held:
    """`t[e, ...]` for a global expert id e, on a tensor that holds only the kept experts."""

    def __init__(self, tensor: torch.Tensor, local: torch.Tensor, num_experts: int):
        self._t, self._local = tensor, local
        self.shape = torch.Size((num_experts, *tensor.shape[1:]))

    def __getitem__(self, key):
        e = key[0] if isinstance(key, tuple) else key
        i = int(self._local[e])
        if i < 0:
            raise ModelError(f"expert {e} is not held by this subset model.")
        return self._t[(i, *key[1:])] if isinstance(key, tuple) else self._t[i]


class SubsetExperts(nn.Module):
    """Only the kept routed experts, in full precision; `local_index[e]` is -1 for a dropped expert."""

    def __init__(self, experts: nn.Module, kept: list[int]):
        super().__init__()
        self.num_experts = experts.num_experts
        self.act_fn = experts.act_fn
        self.kept = sorted(kept)
        local = torch.full((self.num_experts,), -1, dtype=torch.long)
        local[self.kept] = torch.arange(len(self.kept))
        self.register_buffer("local_index", local, persistent=False)
        self.gate_up = nn.Parameter(experts.gate_up_proj.detach()[self.kept].clone(), requires_grad=False)  # [K, 2I, H]
        self.down = nn.Parameter(experts.down_proj.detach()[self.kept].clone(), requires_grad=False)  # [K, H, I]

    @property
    def gate_up_proj(self) -> _Held:
        return _Held(self.gate_up, self.local_index, self.num_experts)

    @property
    def down_proj(self) -> _Held:
        return _Held(self.down, self.local_index, self.num_experts)

    def forward(self, hidden, top_k_index, top_k_weights):
        if bool((self.local_index[top_k_index] < 0).any()):
            raise ModelError("a token was routed to an expert this subset does not hold; restrict the router first.")

        def weights_of(e):
            i = int(self.local_index[e])
            return self.gate_up[i], self.down[i]

        return run_experts(hidden, top_k_index, top_k_weights, weights_of, self.act_fn)
