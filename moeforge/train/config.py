"""What a fine-tuning run is: one frozen config shared by ESFT, full fine-tuning and LoRA.

Defaults are sized for the testbed (a small DeepSeek-V2-class model pre-trained at lr 3e-3):
lr 1e-3 with 10 warm-up steps then cosine decay to a tenth, 200 optimizer steps of 8 rows,
AdamW weight decay 0.01, gradient norm clipped at 1.0. On the small testbed (4 experts chosen
for GSM8K) lr 1e-3 took held-out maths loss from 4.47 to 4.23 with wikitext 3.93 → 4.00; 3e-4
barely moved it (4.43), 3e-3 reached 4.08 but wikitext rose to 4.40. For a real base model
(DeepSeek-V2-Lite) use the paper's lr 1e-5.
"""

import math
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_STEPS = 200


Optimizer = Literal["adamw", "adamw_8bit"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    lr: float = Field(1e-3, gt=0)  # peak learning rate
    steps: int | None = Field(None, ge=1)  # optimizer steps; or give `tokens` instead (neither: 200 steps)
    tokens: int | None = Field(None, ge=1)  # token budget: steps = ceil(tokens / (batch_size·grad_accum·seq_len))
    batch_size: int = Field(8, ge=1)  # rows per micro-batch
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
    max_grad_norm: float = Field(1.0, ge=0)  # clip the global gradient norm to this; 0 turns clipping off
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.01, ge=0)  # AdamW, decoupled; matrices only (no norms or biases)
    seed: int = 0  # batch order (and dropout, if the model has any)
    bf16: Literal["auto", "on", "off"] = "auto"  # autocast to bfloat16; auto = on CUDA devices that support it
    checkpoint_every: int = Field(50, ge=0)  # steps between checkpoints when a run folder is given; 0 = never
    activation_checkpointing: bool = False  # recompute each decoder layer in the backward pass instead of keeping its activations
    loss_chunk_tokens: int = Field(0, ge=0)  # LM head + loss this many positions at a time (model.loss.chunked_lm_loss); 0: all at once
    optimizer: Optimizer = "adamw"  # adamw_8bit: bitsandbytes' 8-bit block-wise AdamW states (the 'lean' extra)

    @model_validator(mode="after")
    def _one_budget(self) -> "TrainConfig":
        if self.steps is not None and self.tokens is not None:
            raise ValueError(f"give steps ({self.steps}) or tokens ({self.tokens}), not both")
        return self

    def total_steps(self, seq_len: int) -> int:
        """Optimizer steps of this run for rows of `seq_len` tokens."""
        if self.tokens is not None:
            return max(1, math.ceil(self.tokens / (self.batch_size * self.grad_accum * seq_len)))
        return self.steps if self.steps is not None else DEFAULT_STEPS

    @property
    def rows_per_step(self) -> int:
        return self.batch_size * self.grad_accum
