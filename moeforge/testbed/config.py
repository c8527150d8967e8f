"""What a testbed build is: one frozen config, two presets, and the DeepSeek-V2 config it implies.

The model is DeepSeek-V2 in miniature: a dense first layer, a shared expert, MLA attention and
fine-grained routed experts with softmax top-k gating (DESIGN.md "Facts about the models").
"""

import hashlib

from pydantic import BaseModel, ConfigDict, Field, model_validator
from moeforge.errors import ConfigError

GENERAL_DOMAINS = ("wikitext", "python", "medical")  # the pre-training mix; maths is kept out
EVAL_DOMAINS = ("wikitext", "python", "medical", "math")


class TestbedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    __test__ = False  # not a pytest class

    version: int = 1
    seed: int = 0
    vocab_size: int = Field(4096, ge=300, le=65536)
    hidden_size: int = Field(160, ge=16)
    num_layers: int = Field(5, ge=2)  # layer 0 is dense, the rest MoE
    num_experts: int = Field(48, ge=2)
    top_k: int = Field(6, ge=1)
    moe_intermediate_size: int = Field(96, ge=4)
    num_heads: int = Field(4, ge=1)
    seq_len: int = Field(256, ge=16)
    batch_size: int = Field(16, ge=1)
    train_tokens: int = Field(1_250_000, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    aux_loss_coef: float = Field(0.01, ge=0)  # Switch-style load balancing; HF DeepSeek computes none
    eval_tokens_per_domain: int = Field(32_768, ge=16)
    corpus_chars: int | None = Field(None, ge=1000)  # cap per domain, for small builds

    @model_validator(mode="after")
    def _top_k_fits(self) -> "TestbedConfig":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        return self

    @property
    def steps(self) -> int:
        return max(1, self.train_tokens // (self.batch_size * self.seq_len))

    def key(self) -> str:
        """A short digest naming this exact build (the cache key)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


PRESETS = {
    "default": TestbedConfig(),
    "small": TestbedConfig(
        vocab_size=512, hidden_size=32, num_layers=3, num_experts=8, top_k=2, moe_intermediate_size=16,
        num_heads=2, seq_len=64, batch_size=8, train_tokens=100_000, lr=1e-2, warmup_steps=5,
        eval_tokens_per_domain=2048, corpus_chars=60_000,
    ),
}


def preset(name: str) -> TestbedConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown testbed preset {name!r} (presets: {', '.join(PRESETS)}).")
    return PRESETS[name]


def deepseek_config(cfg: TestbedConfig, *, eos_id: int, pad_id: int):
    """The transformers DeepseekV2Config of this testbed."""
    from transformers import DeepseekV2Config

    head_dim = cfg.hidden_size // cfg.num_heads
    return DeepseekV2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=4 * cfg.hidden_size,
        moe_intermediate_size=cfg.moe_intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        n_routed_experts=cfg.num_experts,
        num_experts_per_tok=cfg.top_k,
        n_shared_experts=1,
        first_k_dense_replace=1,
        kv_lora_rank=max(16, cfg.hidden_size // 2),
        q_lora_rank=None,
        qk_nope_head_dim=head_dim,
        qk_rope_head_dim=max(8, head_dim // 2),
        v_head_dim=head_dim,
        n_group=1,
        topk_group=1,
        topk_method="greedy",
        norm_topk_prob=False,
        routed_scaling_factor=1.0,
        max_position_embeddings=cfg.seq_len,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        initializer_range=0.02,
    )
