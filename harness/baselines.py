"""The baselines ESFT is measured against: full fine-tuning and LoRA, through the same loop.

Both change the model in place (pass a copy to keep the base). LoRA (Hu et al. 2021, via
`peft`) goes on the attention projections. It cannot go on the dense MLPs and shared experts by
name: for MoE model types peft 0.21 rewrites the targets `gate_proj`/`up_proj`/`down_proj`/`gate`
to the fused routed-expert tensors and the router (its v4 → v5 adapter conversion), and drops
them as modules. Routed experts are fused 3-D tensors, not `nn.Linear`; peft adapts them through
`target_parameters` (one low-rank pair per fused tensor), which `target_experts=True` adds.
"""

import logging
from pathlib import Path

from torch import nn

from moeforge.data.packing import Packed
from moeforge.extras import require
from moeforge.model.families import family_of
from moeforge.train.config import TrainConfig
from moeforge.train.loop import train
from moeforge.train.metrics import StepCallback, TrainResult

log = logging.getLogger(__name__)


def train_full(
    model,
    packed: Packed,
    cfg: TrainConfig,
    *,
    run_dir: Path | None = None,
    on_step: StepCallback | None = None,
    resume: bool = True,
) -> TrainResult:
    """Fine-tune every parameter of `model`, in place."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    try:
        return train(model, params, packed, cfg, run_dir=run_dir, on_step=on_step, resume=resume, identity={"method": "full"})
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])


def train_lora(
    model,
    packed: Packed,
    cfg: TrainConfig,
    *,
    rank: int = 8,
    alpha: int = 16,
    target_experts: bool = False,
    run_dir: Path | None = None,
    on_step: StepCallback | None = None,
    resume: bool = True,
):
    """Train LoRA adapters, merge them into `model` (in place); (the merged model, result)."""
    (peft,) = require("bench", "the LoRA baseline")
    LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model

    family = family_of(model.config)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    targets = lora_targets(model)
    experts = [f"{family.block}.experts.gate_up_proj", f"{family.block}.experts.down_proj"] if target_experts else []
    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, target_parameters=experts or None)
    peft_model = get_peft_model(model, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    identity = {"method": "lora", "rank": str(rank), "alpha": str(alpha), "targets": " ".join(targets + experts)}
    merged = None
    try:
        result = train(peft_model, params, packed, cfg, run_dir=run_dir, on_step=on_step, resume=resume, identity=identity)
        merged = peft_model.merge_and_unload()
    finally:
        if merged is None:  # training failed: drop the adapters, leave the base weights as they were
            merged = peft_model.unload()
        for name, p in merged.named_parameters():
            p.requires_grad_(flags.get(name, p.requires_grad))
    log.info("LoRA rank %d on %s: %d parameters trained, merged", rank, ", ".join(targets + experts), result.trainable_params)
    return merged, result


def lora_targets(model) -> list[str]:
    """Names (last component) of every attention nn.Linear, as peft's `target_modules`."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) and ".self_attn." in name})
