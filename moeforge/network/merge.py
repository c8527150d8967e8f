"""The merge: top-k deltas by score, each clipped to the cohort's median norm, averaged; kept only if it helps.

DESIGN.md "The network", step 6. `merge` builds the candidates from the round's scores; the
clipping keeps one miner with an outsized delta from steering the average (Templar's
median-norm clipping). `choose_state` then judges them on a second held-out sample, one the
scores were not computed on, so a merge cannot win by overfitting the first sample:

    merged, if it beats the current state there; else the best single update, if it does;
    else nothing (the current state stays).

"Beats" means loss(current) − loss(candidate) > margin, with both losses finite. Evaluation
swaps slices in place (`scoring.applied`); the model ends bit-identical to how it began.
"""

import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from moeforge.errors import ConfigError, ModelError
from moeforge.model.slices import ExpertSlice, extract_slice, linear_combination
from moeforge.network.checks import global_norm
from moeforge.network.scoring import Batch, applied, batch_losses, holds

log = logging.getLogger(__name__)

Choice = Literal["merged", "single", "none"]


@dataclass(frozen=True, eq=False)
class MergeCandidate:
    merged: ExpertSlice | None  # delta: mean of the clipped top-k deltas; None when no score was positive
    best_single: ExpertSlice | None  # the top-scoring delta, as submitted
    best_hotkey: str | None
    clip_norm: float | None  # the cohort's median global L2 norm
    coefficients: dict[str, float]  # merged = Σ coefficients[h] · delta[h]  (clip factor / k)
    shares: dict[str, float]  # each miner's share of the merged update: clipped norms, normalised to sum 1


@dataclass(frozen=True)
class MergeDecision:
    choice: Choice
    hotkey: str | None  # the best single update's miner (whatever the choice)
    current_loss: float  # on the second held-out sample
    merged_loss: float | None
    single_loss: float | None
    contributions: dict[str, float]  # who the adopted state credits, summing to 1; empty for "none"


def merge(current: ExpertSlice, scored: Sequence[tuple[str, float, ExpertSlice]], *, top_k: int) -> MergeCandidate:
    """Candidates from (hotkey, score, delta): the top_k positive scores.

    Equal scores keep the order given: pass submissions in commit order so the earlier one wins.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1 (got {top_k}).")
    for hotkey, _, delta in scored:
        if delta.kind != "delta" or delta.slots != current.slots:
            raise ModelError(f"{hotkey}: a {delta.kind} slice over {len(delta.slots)} experts is not a delta over the {len(current.slots)} assigned.")
    cohort = sorted((s for s in scored if s[1] > 0), key=lambda s: -s[1])[:top_k]
    if not cohort:
        return MergeCandidate(None, None, None, None, {}, {})
    norms = {hotkey: global_norm(delta.state_dict()) for hotkey, _, delta in cohort}
    clip = statistics.median(norms.values())
    factors = {h: min(1.0, clip / n) if n > 0 else 0.0 for h, n in norms.items()}
    coefficients = {h: f / len(cohort) for h, f in factors.items()}
    clipped = {h: factors[h] * norms[h] for h in norms}
    total = sum(clipped.values())
    shares = {h: c / total for h, c in clipped.items()} if total > 0 else {}
    merged = linear_combination(current, [(coefficients[h], delta) for h, _, delta in cohort])
    best_hotkey, _, best = cohort[0]
    log.info(
        "merge: %d of %d positive deltas, median norm %.4g, %d clipped",
        len(cohort), len(scored), clip, sum(f < 1.0 for f in factors.values()),
    )
    return MergeCandidate(merged, best, best_hotkey, clip, coefficients, shares)


def choose_state(
    model,
    current: ExpertSlice,
    candidate: MergeCandidate,
    batches: Sequence[Batch],
    *,
    margin: float = 0.0,
    batch_size: int = 8,
    midway: Callable[[], object] | None = None,
) -> tuple[ExpertSlice, MergeDecision]:
    """(the next expert state, why): merged, else best single, else current, judged on `batches`.
    `midway()` once the current state's loss is known, before the candidates are judged."""
    if not holds(model, current):
        raise ModelError("the model does not hold the current expert state; write it in (apply_slice) before merging.")
    current_loss = batch_losses(model, batches, batch_size=batch_size).mean
    if not math.isfinite(current_loss):
        raise ModelError(f"the current state's loss on the merge sample is {current_loss}; the model or the data is broken.")
    if midway is not None:
        midway()
    merged_loss = single_loss = None
    if candidate.merged is not None:
        merged_loss = _loss_with(model, current, candidate.merged, batches, batch_size)
        if _beats(current_loss, merged_loss, margin):
            state = _state_with(model, current, candidate.merged)
            return state, MergeDecision("merged", candidate.best_hotkey, current_loss, merged_loss, None, dict(candidate.shares))
    if candidate.best_single is not None:
        single_loss = _loss_with(model, current, candidate.best_single, batches, batch_size)
        if _beats(current_loss, single_loss, margin):
            state = _state_with(model, current, candidate.best_single)
            decision = MergeDecision("single", candidate.best_hotkey, current_loss, merged_loss, single_loss, {candidate.best_hotkey: 1.0})
            return state, decision
    return current, MergeDecision("none", candidate.best_hotkey, current_loss, merged_loss, single_loss, {})


def _beats(current_loss: float, loss: float, margin: float) -> bool:
    return math.isfinite(loss) and current_loss - loss > margin


def _loss_with(model, current: ExpertSlice, delta: ExpertSlice, batches: Sequence[Batch], batch_size: int) -> float:
    with applied(model, current, delta):
        got = batch_losses(model, batches, batch_size=batch_size)
    return math.nan if got.first_non_finite is not None else got.mean


def _state_with(model, current: ExpertSlice, delta: ExpertSlice) -> ExpertSlice:
    """current + delta exactly as the model holds it (the same rounding as apply_slice)."""
    with applied(model, current, delta):
        return extract_slice(model, current.slots, current.base_fingerprint)
