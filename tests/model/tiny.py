"""Tiny random instances of every supported MoE family: 2-3 layers, hidden 32, 8 experts, top-2."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM

_COMMON = dict(
    vocab_size=96, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    bos_token_id=0, eos_token_id=1, pad_token_id=2,
)

TINY = {
    "deepseek_v2": dict(
        intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3, n_routed_experts=8, num_experts_per_tok=2,
        n_shared_experts=2, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8,
        qk_rope_head_dim=8, v_head_dim=8, n_group=1, topk_group=1, num_key_value_heads=4,
    ),
    "deepseek_v3": dict(
        intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3, n_routed_experts=8, num_experts_per_tok=2,
        n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8,
        qk_rope_head_dim=8, v_head_dim=8, n_group=4, topk_group=2, num_key_value_heads=4,
    ),
    "qwen2_moe": dict(
        intermediate_size=64, moe_intermediate_size=16, shared_expert_intermediate_size=32, num_hidden_layers=3,
        num_experts=8, num_experts_per_tok=2, mlp_only_layers=[0],
    ),
    "qwen3_moe": dict(
        intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3, num_experts=8, num_experts_per_tok=2,
        head_dim=8, mlp_only_layers=[1],
    ),
    "olmoe": dict(intermediate_size=16, num_hidden_layers=2, num_experts=8, num_experts_per_tok=2),
    "mixtral": dict(intermediate_size=16, num_hidden_layers=2, num_local_experts=8, num_experts_per_tok=2),
    "gpt_oss": dict(
        intermediate_size=16, num_hidden_layers=2, num_local_experts=8, num_experts_per_tok=2, head_dim=8,
        layer_types=["sliding_attention", "full_attention"], sliding_window=16,
    ),
    "llama4_text": dict(
        intermediate_size=16, intermediate_size_mlp=48, num_hidden_layers=3, num_local_experts=8,
        num_experts_per_tok=2, head_dim=8, moe_layers=[1, 2], interleave_moe_layer_step=1,
    ),
}


def tiny_config(model_type: str):
    return AutoConfig.for_model(model_type, **{**_COMMON, **TINY[model_type]})


def tiny_model(model_type: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()

