"""Exact parameter and byte counts of any supported config, without allocating it.

The model is built on the meta device, so a memory plan for DeepSeek-V3 costs a few seconds
and no memory. Bytes are counted per tensor in the dtype transformers would load it in
(modules kept in float32, such as DeepSeek's router, count 4 bytes a value), over the
checkpoint's state dict: parameters plus persistent buffers.
"""

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from moeforge.model.families import family_of, moe_layers


@dataclass(frozen=True)
class ModelSize:
    model_type: str
    dtype: str
    total_params: int
    total_bytes: int  # state dict as loaded: parameters and persistent buffers
    moe_layers: int
    experts_per_layer: int
    top_k: int
    params_per_expert: int  # one routed expert (gate, up, down, and biases if any)
    bytes_per_expert: int
    routed_expert_params: int  # all routed experts of all layers
    routed_expert_bytes: int
    active_params: int  # used per token: everything but the routed experts, plus top_k of them per layer

    @property
    def backbone_params(self) -> int:
        """Everything that is not a routed expert: embeddings, attention, norms, routers, shared experts."""
        return self.total_params - self.routed_expert_params

    @property
    def backbone_bytes(self) -> int:
        return self.total_bytes - self.routed_expert_bytes


def size_of_config(config: PretrainedConfig, dtype: torch.dtype | None = None) -> ModelSize:
    """The exact size of `config`'s model, built on the meta device (nothing allocated)."""
    family_of(config)
    dtype = dtype or _config_dtype(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return size_of_model(model)


def size_of_model(model) -> ModelSize:
    """The exact size of a model instance (real or on the meta device)."""
    layers = moe_layers(model)
    first = layers[0]
    state = _unique_tensors(model)
    total_params = sum(p.numel() for p in model.parameters())
    total_bytes = sum(t.numel() * t.element_size() for t in state.values())
    expert_params = expert_bytes = 0
    for layer in layers:
        for t in _expert_tensors(layer.experts):
            expert_params += t.numel()
            expert_bytes += t.numel() * t.element_size()
    n_experts = sum(layer.num_experts for layer in layers)
    per_expert = expert_params // n_experts
    active = total_params - expert_params + sum(layer.top_k for layer in layers) * per_expert
    return ModelSize(
        model_type=model.config.model_type,
        dtype=str(model.dtype).removeprefix("torch."),
        total_params=total_params,
        total_bytes=total_bytes,
        moe_layers=len(layers),
        experts_per_layer=first.num_experts,
        top_k=first.top_k,
        params_per_expert=per_expert,
        bytes_per_expert=expert_bytes // n_experts,
        routed_expert_params=expert_params,
        routed_expert_bytes=expert_bytes,
        active_params=active,
    )


def _expert_tensors(experts) -> list[torch.Tensor]:
    return [p for name, p in experts.named_parameters(recurse=False)]


def _unique_tensors(model) -> dict[str, torch.Tensor]:
    """State-dict tensors with tied weights counted once."""
    seen, out = set(), {}
    for name, t in model.state_dict(keep_vars=True).items():
        key = id(t)
        if key not in seen:
            seen.add(key)
            out[name] = t
    return out


def _config_dtype(config: PretrainedConfig) -> torch.dtype:
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return getattr(torch, value) if isinstance(value, str) else value
