"""Proof-of-Loss: loss(current) − loss(current + delta) on the same held-out batches.

DESIGN.md "The network", step 5, and "What the closest existing system gets wrong". The model is
loaded once: each delta is added to the assigned experts in place, evaluated, and the saved
current experts are written back (not subtracted: float add/sub does not round-trip), after
which the experts are checked bit for bit. Every batch counts: a NaN or inf loss in any batch
rejects the submission (NON_FINITE_LOSS); batches are never dropped, so making hard batches
diverge cannot raise a score. The loss is token-weighted across batches (each labelled token
counts once), the same `mean_token_loss` every evaluation uses.
"""

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from moeforge.errors import ModelError
from moeforge.eval.domain import rows_loss
from moeforge.model.experts import read_expert
from moeforge.model.slices import ExpertSlice, apply_slice
from moeforge.network.checks import Reject, Verdict

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids [B, L], labels [B, L]), labels −100 unscored


@dataclass(frozen=True)
class BatchLosses:
    losses: tuple[float, ...]  # token-weighted mean loss of each batch evaluated, nats
    tokens: tuple[int, ...]  # scored positions per batch

    @property
    def mean(self) -> float:
        """Token-weighted mean over the batches: each scored token counts once."""
        return sum(loss * n for loss, n in zip(self.losses, self.tokens)) / sum(self.tokens)

    @property
    def first_non_finite(self) -> int | None:
        return next((i for i, loss in enumerate(self.losses) if not math.isfinite(loss)), None)


@dataclass(frozen=True)
class ScoringCost:
    eval_s: float  # one plain evaluation pass over the batches
    score_s: float  # scoring one submission: apply, evaluate, restore and verify

    @property
    def ratio(self) -> float:
        return self.score_s / self.eval_s


def batch_losses(model, batches: Sequence[Batch], *, batch_size: int = 8, stop_at_non_finite: bool = True) -> BatchLosses:
    """Loss of each batch in turn; with `stop_at_non_finite` it stops after the first NaN or inf."""
    losses, tokens = [], []
    for input_ids, labels in batches:
        result = rows_loss(model, input_ids, labels, batch_size=batch_size)
        losses.append(result.loss)
        tokens.append(result.tokens)
        if stop_at_non_finite and not math.isfinite(result.loss):
            break
    return BatchLosses(tuple(losses), tuple(tokens))


def holds(model, piece: ExpertSlice) -> bool:
    """Whether `model`'s experts at `piece`'s slots are bit-identical to `piece` (kind "experts")."""
    for slot in piece.slots:
        have = read_expert(model, slot).tensors()
        for part, want in piece.weights[slot].tensors().items():
            if not _same_bits(have[part], want):
                return False
    return True


@contextmanager
def applied(model, current: ExpertSlice, delta: ExpertSlice) -> Iterator[None]:
    """`model` holds current + delta inside the block, and exactly `current` again after it.

    `model` must hold `current` on entry; a delta over other slots, or one that does not fit,
    is a ModelError raised before anything is written.
    """
    if delta.kind != "delta" or current.kind != "experts":
        raise ModelError(f"applied() takes the current experts and a delta; got kinds {current.kind!r} and {delta.kind!r}.")
    if delta.slots != current.slots:
        raise ModelError(f"the delta covers {len(delta.slots)} experts, not the {len(current.slots)} assigned ones.")
    try:
        apply_slice(model, delta)  # checks the whole delta first: a misfit raises before anything is written
        yield
    finally:
        apply_slice(model, current)
        if not holds(model, current):
            raise ModelError("the model's experts differ from the current state after restoring it; stop scoring.")


def score_deltas(
    model,
    current: ExpertSlice,
    deltas: Mapping[str, ExpertSlice],
    batches: Sequence[Batch],
    *,
    noise_floor: float,
    batch_size: int = 8,
    on_scored: Callable[[int, int], object] | None = None,
) -> dict[str, Verdict]:
    """A Verdict per hotkey: score = loss(current) − loss(current + delta), or why it was refused.
    `on_scored(done, of)` after each submission (with `model` holding `current` again).

    `model` must hold `current` (checked); it holds it again, bit for bit, on return. A score at
    or below `noise_floor` is NO_IMPROVEMENT with score 0.
    """
    _check_holds(model, current)
    base = batch_losses(model, batches, batch_size=batch_size)
    if base.first_non_finite is not None:
        i = base.first_non_finite
        raise ModelError(f"the current state's loss on eval batch {i} is {base.losses[i]}; the model or the eval data is broken.")
    verdicts = {}
    for hotkey, delta in deltas.items():
        verdicts[hotkey] = _score_one(model, current, hotkey, delta, batches, base, noise_floor, batch_size)
        log.debug("%s: %s %s", hotkey, verdicts[hotkey].reject or "accepted", verdicts[hotkey].detail)
        if on_scored is not None:
            on_scored(len(verdicts), len(deltas))
    accepted = [v.score for v in verdicts.values() if v.accepted]
    log.info(
        "scored %d submissions on %d batches (%d tokens): %d above the noise floor, best Δloss %s",
        len(deltas), len(batches), sum(base.tokens), len(accepted), f"{max(accepted):.4f}" if accepted else "none",
    )
    return verdicts


def scoring_cost(model, current: ExpertSlice, delta: ExpertSlice, batches: Sequence[Batch], *, batch_size: int = 8) -> ScoringCost:
    """Seconds for one plain evaluation pass and for scoring one submission over the same batches."""
    _check_holds(model, current)
    start = time.perf_counter()
    batch_losses(model, batches, batch_size=batch_size, stop_at_non_finite=False)
    eval_s = time.perf_counter() - start
    start = time.perf_counter()
    with applied(model, current, delta):
        batch_losses(model, batches, batch_size=batch_size)
    return ScoringCost(eval_s=eval_s, score_s=time.perf_counter() - start)


def _score_one(model, current, hotkey, delta, batches, base: BatchLosses, noise_floor: float, batch_size: int) -> Verdict:
    if delta.slots != current.slots or delta.kind != "delta":
        return Verdict(hotkey, Reject.WRONG_KEYS, f"a {delta.kind} slice over {len(delta.slots)} experts, not a delta over the {len(current.slots)} assigned")
    try:
        with applied(model, current, delta):
            got = batch_losses(model, batches, batch_size=batch_size)
    except ModelError as exc:
        if holds(model, current):
            return Verdict(hotkey, Reject.WRONG_SHAPE, str(exc))
        raise
    bad = got.first_non_finite
    if bad is not None:
        return Verdict(hotkey, Reject.NON_FINITE_LOSS, f"eval batch {bad} of {len(batches)}: loss {got.losses[bad]}", base_loss=base.mean)
    gain = base.mean - got.mean
    if gain <= noise_floor:
        return Verdict(hotkey, Reject.NO_IMPROVEMENT, f"Δloss {gain:.6f} is at or below the noise floor {noise_floor}", 0.0, got.mean, base.mean)
    return Verdict(hotkey, None, f"Δloss {gain:.6f} ({base.mean:.6f} → {got.mean:.6f})", gain, got.mean, base.mean)


def _check_holds(model, current: ExpertSlice) -> None:
    if current.kind != "experts":
        raise ModelError(f"the current state must be an expert slice, not a {current.kind}.")
    if not holds(model, current):
        raise ModelError("the model does not hold the current expert state; write it in (apply_slice) before scoring.")


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (torch.equal would call -0.0 and 0.0 equal, and NaN unequal to itself)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(torch.uint8), b.to(a.device).contiguous().view(torch.uint8))
