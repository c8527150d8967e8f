"""ESFT training: fine-tune only the selected routed experts and return the update as a delta.

Wang et al. 2024 (arXiv 2407.01906); DESIGN.md "ESFT, exactly". Router, attention, embeddings,
norms and shared experts stay frozen. The selected experts train as their own parameters
(trainable.py); afterwards the model is returned to its base weights, bit for bit, and the
update comes back as an exact `delta` slice (new − base) that the caller applies when it wants.
"""

import logging
from pathlib import Path

from moeforge.data.packing import Packed
from moeforge.model.experts import ExpertSlot
from moeforge.model.slices import ExpertSlice, extract_slice, make_delta
from moeforge.train.config import TrainConfig
from moeforge.train.loop import train
from moeforge.train.metrics import StepCallback, TrainResult
from moeforge.train.trainable import attach_trainable, detach_trainable

log = logging.getLogger(__name__)


def train_experts(
    model,
    slots: list[ExpertSlot],
    packed: Packed,
    cfg: TrainConfig,
    *,
    base_fingerprint: str,
    run_dir: Path | None = None,
    on_step: StepCallback | None = None,
    resume: bool = True,
) -> tuple[ExpertSlice, TrainResult]:
    """Train the experts in `slots` on `packed`; (delta new − base, result). `model` ends as it began."""
    base = extract_slice(model, slots, base_fingerprint)
    trainable = attach_trainable(model, slots)
    try:
        identity = {
            "method": "esft",
            "base_fingerprint": base_fingerprint,
            "slots": " ".join(f"{s.layer}:{s.expert}" for s in trainable.slots),
        }
        result = train(
            model, trainable.parameters(), packed, cfg, run_dir=run_dir, on_step=on_step, resume=resume, identity=identity
        )
        trained = trainable.to_slice(base_fingerprint)
    finally:
        detach_trainable(model, trainable, merge=False)
    delta = make_delta(base, trained)
    log.info("trained %d experts (%d parameters): final loss %.4f", len(trainable.slots), trainable.num_params(), result.final_loss)
    return delta, result
