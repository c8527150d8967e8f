"""The merge: top-k deltas by score, each clipped to the cohort's median norm, averaged; kept only if it helps.

DESIGN.md "The network", step 6. `merge` builds the candidate updates from the round's scores;
the clipping keeps one miner with an outsized delta from steering the average (Templar's
median-norm clipping). The validator turns each into an outer-optimizer step (outer.py), and
`choose_state` judges the steps on a second held-out sample, one the scores were not computed on,
so a merge cannot win by overfitting the first sample:

    the merged step, if it beats the current state there; else the best single update's step,
    if it does; else nothing (the current state stays).

"Beats" means loss(current) − loss(candidate) > margin, with both losses finite. With a general
guard (the job's drift budget on its general reference set), a candidate whose general loss is
over the guard's limit is shrunk by halves (a backtracking line search over its scale, at most
`backtrack` halvings) until it fits; one that never fits, or that stops beating the current state
on the way, is dropped. The limit is cumulative: the base model's general loss + ln(1 + budget),
so no sequence of adopted rounds can drift further than the budget.

Credit (`leave_one_out`): a miner's share of an adopted merged state is its marginal
contribution, the merge-sample loss of the adopted state without its term (the others'
coefficients unchanged) minus the adopted state's loss, floored at 0 and normalised over the
cohort. The size of a delta earns nothing by itself: a delta rescaled to the median norm that
adds little to the merge gets a share as small as what it added. When no term has a positive
marginal (every member is redundant with the others), the shares follow the members' significant
scores instead. A single adopted update credits its miner alone. Evaluation swaps slices in
place (`scoring.applied`); the model ends bit-identical to how it began.
"""

import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
    clip_norm: float | None  # the cohort's median global L2 norm (with parts: the median of each part's)
    coefficients: dict[str, float]  # merged = Σ coefficients[h] · delta[h]  (clip factor / k)
    deltas: dict[str, ExpertSlice] = field(default_factory=dict)  # the cohort's deltas, best first


@dataclass(frozen=True, eq=False)
class GeneralGuard:
    """No forgetting, enforced at adoption: the general sample and the most general loss a state may have."""

    batches: Sequence[Batch]
    limit: float  # the base model's general loss + ln(1 + budget)
    backtrack: int = 4  # halvings of a candidate's scale before it is dropped
    base_loss: float | None = None  # the base model's general loss, for the record


@dataclass(frozen=True)
class Attempt:
    candidate: Literal["merged", "single"]
    scale: float
    loss: float  # merge-sample loss
    general_loss: float | None


@dataclass(frozen=True)
class MergeDecision:
    choice: Choice
    hotkey: str | None  # the best single update's miner (whatever the choice)
    current_loss: float  # on the second held-out sample
    merged_loss: float | None  # of the merged step at the first scale tried (the adopted scale if merged)
    single_loss: float | None
    contributions: dict[str, float]  # who the adopted state credits, summing to 1; empty for "none"
    scale: float = 1.0  # the adopted step's scale (line search); 1.0 for "none"
    current_general_loss: float | None = None  # with a guard: the current state's general loss
    general_loss: float | None = None  # with a guard: the resulting state's general loss
    marginal: dict[str, float] = field(default_factory=dict)  # leave-one-out gain of each merged term (nats)
    attempts: tuple[Attempt, ...] = ()

    @property
    def adopted_loss(self) -> float:
        return {"merged": self.merged_loss, "single": self.single_loss, "none": self.current_loss}[self.choice]


def merge(current: ExpertSlice, scored: Sequence[tuple[str, float, ExpertSlice]], *, top_k: int,
          parts: Mapping[str, int] | None = None) -> MergeCandidate:
    """Candidates from (hotkey, score, delta): the top_k positive scores of each part, merged part by part.

    `parts` maps each hotkey to the part of the experts its delta covers (zero elsewhere); each part's
    cohort is clipped to its own median norm and averaged, and the parts' averages add up (they touch
    disjoint experts). None: one part. Equal scores keep the order given: pass submissions in commit
    order so the earlier one wins.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1 (got {top_k}).")
    for hotkey, _, delta in scored:
        if delta.kind != "delta" or delta.slots != current.slots:
            raise ModelError(f"{hotkey}: a {delta.kind} slice over {len(delta.slots)} experts is not a delta over the {len(current.slots)} assigned.")
    positive = sorted((s for s in scored if s[1] > 0), key=lambda s: -s[1])
    by_part: dict[int, list[tuple[str, float, ExpertSlice]]] = {}
    for s in positive:
        by_part.setdefault(0 if parts is None else parts[s[0]], []).append(s)
    cohorts = {p: members[:top_k] for p, members in sorted(by_part.items())}
    cohort = sorted((s for members in cohorts.values() for s in members), key=lambda s: -s[1])
    if not cohort:
        return MergeCandidate(None, None, None, None, {})
    norms = {hotkey: global_norm(delta.state_dict()) for hotkey, _, delta in cohort}
    coefficients, clips = {}, []
    for members in cohorts.values():
        clip = statistics.median(norms[h] for h, _, _ in members)
        clips.append(clip)
        for h, _, _ in members:
            coefficients[h] = (min(1.0, clip / norms[h]) if norms[h] > 0 else 0.0) / len(members)
    merged = linear_combination(current, [(coefficients[h], delta) for h, _, delta in cohort])
    best_hotkey, _, best = cohort[0]
    log.info(
        "merge: %d of %d positive deltas in %d part(s), median norm %.4g, %d clipped",
        len(cohort), len(scored), len(cohorts), statistics.median(clips),
        sum(coefficients[h] * len(cohorts[0 if parts is None else parts[h]]) < 1.0 for h in coefficients),
    )
    return MergeCandidate(merged, best, best_hotkey, statistics.median(clips), coefficients, {h: d for h, _, d in cohort})


def choose_state(
    model,
    current: ExpertSlice,
    steps: Mapping[str, ExpertSlice | None],
    batches: Sequence[Batch],
    *,
    best_hotkey: str | None = None,
    guard: GeneralGuard | None = None,
    margin: float = 0.0,
    batch_size: int = 8,
    midway: Callable[[], object] | None = None,
) -> tuple[ExpertSlice, MergeDecision]:
    """(the next expert state, why): the "merged" step, else the "single" one, else current, judged on `batches`.

    `steps` maps "merged" and "single" to deltas over the current state (either may be None).
    Contributions are left empty here: the caller credits the adopted step (`leave_one_out`).
    `midway()` once the current state's loss is known, before the candidates are judged."""
    if not holds(model, current):
        raise ModelError("the model does not hold the current expert state; write it in (apply_slice) before merging.")
    current_loss = batch_losses(model, batches, batch_size=batch_size).mean
    if not math.isfinite(current_loss):
        raise ModelError(f"the current state's loss on the merge sample is {current_loss}; the model or the data is broken.")
    current_general = batch_losses(model, guard.batches, batch_size=batch_size).mean if guard else None
    if midway is not None:
        midway()
    attempts: list[Attempt] = []
    first_loss: dict[str, float] = {}
    for name in ("merged", "single"):
        step = steps.get(name)
        if step is None:
            continue
        for halvings in range((guard.backtrack if guard else 0) + 1):
            scale = 0.5**halvings
            trial = step if halvings == 0 else linear_combination(current, [(scale, step)])
            with applied(model, current, trial):
                loss = _finite_loss(model, batches, batch_size)
                first_loss.setdefault(name, loss)
                beats = _beats(current_loss, loss, margin)
                general = _finite_loss(model, guard.batches, batch_size) if guard and beats else None
                attempts.append(Attempt(name, scale, loss, general))
                fits = guard is None or (general is not None and general <= guard.limit)
                if beats and fits:
                    state = extract_slice(model, current.slots, current.base_fingerprint)
            if not beats:
                break  # smaller steps of a step that no longer helps do not help either
            if fits:
                log.info("adopted the %s step at scale %g: merge loss %.4f → %.4f%s", name, scale, current_loss, loss,
                         f", general {current_general:.4f} → {general:.4f} (limit {guard.limit:.4f})" if guard else "")
                return state, MergeDecision(
                    name, best_hotkey, current_loss, loss if name == "merged" else first_loss.get("merged"),
                    loss if name == "single" else None, {best_hotkey: 1.0} if name == "single" else {}, scale,
                    current_general, general, {}, tuple(attempts))
    return current, MergeDecision("none", best_hotkey, current_loss, first_loss.get("merged"), first_loss.get("single"), {},
                                  1.0, current_general, current_general, {}, tuple(attempts))


def leave_one_out(model, current: ExpertSlice, adopted_step: ExpertSlice, terms: Mapping[str, tuple[float, ExpertSlice]],
                  batches: Sequence[Batch], adopted_loss: float, *, scores: Mapping[str, float],
                  batch_size: int = 8) -> tuple[dict[str, float], dict[str, float]]:
    """(marginal gain of each term, contribution shares summing to 1): module docstring.

    `terms[h]` = (the coefficient the adopted step gives h's delta, the delta): the adopted state
    without h is adopted_step − coefficient · delta, evaluated on `batches`."""
    marginal = {}
    for hotkey, (coefficient, delta) in terms.items():
        without = linear_combination(current, [(1.0, adopted_step), (-coefficient, delta)])
        with applied(model, current, without):
            loss = _finite_loss(model, batches, batch_size)
        marginal[hotkey] = loss - adopted_loss if math.isfinite(loss) else 0.0
    positive = {h: max(0.0, m) for h, m in marginal.items()}
    weights = positive if sum(positive.values()) > 0 else {h: max(0.0, scores.get(h, 0.0)) for h in terms}
    total = sum(weights.values())
    shares = {h: w / total for h, w in weights.items()} if total > 0 else {h: 1 / len(terms) for h in terms}
    return marginal, shares


def _beats(current_loss: float, loss: float, margin: float) -> bool:
    return math.isfinite(loss) and current_loss - loss > margin


def _finite_loss(model, batches: Sequence[Batch], batch_size: int) -> float:
    got = batch_losses(model, batches, batch_size=batch_size)
    return math.nan if got.first_non_finite is not None else got.mean
