"""Run a model class's own experts forward on weights it does not hold: a working set, or stacked trainable experts.

Transformers' fused experts modules compute `Σ_k w_k · expert_k(x)` with the implementation the
config names (`_experts_implementation`: the eager loop, `grouped_mm`, `batched_mm`, ...). `weightless`
copies such a module without its weights; `call_with` runs that copy's forward on given
`gate_up [S, 2I, H]` and `down [S, H, I]` for S experts, the routing renumbered onto them.
"""

import copy

import torch
from torch import nn


def weightless(experts: nn.Module) -> nn.Module:
    """A shallow copy of a fused experts module, without its parameters: its class's forward and flags only."""
    template = copy.copy(experts)
    template.__dict__["_parameters"] = {}
    return template


def call_with(template: nn.Module, gate_up: torch.Tensor, down: torch.Tensor, hidden: torch.Tensor,
              top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """`template`'s forward with `gate_up`, `down` as its S experts' weights; `top_k_index` already in 0..S-1."""
    working = template.__class__.__new__(template.__class__)
    working.__dict__.update(template.__dict__)
    working.__dict__.update(gate_up_proj=gate_up, down_proj=down, num_experts=gate_up.shape[0])
    return working(hidden, top_k_index, top_k_weights)


def can_call(experts: nn.Module) -> bool:
    """Whether `experts` is a transformers fused experts module whose forward `call_with` can run."""
    return hasattr(experts, "config") and hasattr(experts, "_is_expert_parallel") and hasattr(experts, "gate_up_proj")
