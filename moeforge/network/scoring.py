"""Proof-of-Loss: loss(reference) − loss(reference + delta) on the same held-out rows, tested for significance.

DESIGN.md "The network", step 5, and "What the closest existing system gets wrong". The model is
loaded once: each delta is added to the assigned experts in place, evaluated, and the saved
reference experts are written back (not subtracted: float add/sub does not round-trip), after
which the experts are checked bit for bit. Every batch counts: a NaN or inf loss in any batch
rejects the submission (NON_FINITE_LOSS); batches are never dropped, so making hard batches
diverge cannot raise a score. The loss is token-weighted across batches (each labelled token
counts once), the same `mean_token_loss` every evaluation uses.

The reference is the state the network reaches without the submission (`outer.free_state`: the
current state plus the outer optimizer's momentum step), so extrapolating public updates earns
nothing. A gain counts only when it is significant: a paired one-sided t-test over the scoring
rows (per row, the summed loss without the delta minus with it) must give p < the job's
`significance`; anything else is NO_IMPROVEMENT with score 0. With a general guard, the score is
the domain gain minus the rise in general loss (nats, on the guard's sample) the delta causes, so
a delta that buys domain gain with general ability scores down.
"""

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from moeforge.errors import DataError, ModelError
from moeforge.model.experts import read_expert
from moeforge.model.loss import row_losses
from moeforge.model.slices import ExpertSlice, apply_slice, extract_slice, linear_combination
from moeforge.network.checks import Reject, Verdict
from moeforge.network.significance import paired_gain

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids [B, L], labels [B, L]), labels −100 unscored


@dataclass(frozen=True)
class BatchLosses:
    losses: tuple[float, ...]  # token-weighted mean loss of each batch evaluated, nats
    tokens: tuple[int, ...]  # scored positions per batch
    row_sums: torch.Tensor  # float64 [rows evaluated]: each row's summed loss, nats
    row_tokens: torch.Tensor  # int64 [rows evaluated]: each row's scored positions

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
    """Loss of each batch (and row) in turn; with `stop_at_non_finite` it stops after the first NaN or inf batch."""
    device = next(model.parameters()).device
    losses, tokens, sums, counts = [], [], [], []
    for input_ids, labels in batches:
        row_sum, row_count = row_losses(model, input_ids.to(device), labels.to(device), batch_size)
        n = int(row_count.sum())
        if n == 0:
            raise DataError("an eval batch has no labelled tokens (every label is -100).")
        losses.append(float(row_sum.sum()) / n)
        tokens.append(n)
        sums.append(row_sum)
        counts.append(row_count)
        if stop_at_non_finite and not math.isfinite(losses[-1]):
            break
    empty = torch.zeros(0, dtype=torch.float64)
    return BatchLosses(tuple(losses), tuple(tokens), torch.cat(sums) if sums else empty,
                       torch.cat(counts) if counts else empty.long())


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


def state_with(model, current: ExpertSlice, delta: ExpertSlice) -> ExpertSlice:
    """current + delta exactly as the model holds it (the same rounding as apply_slice); the model holds current after."""
    with applied(model, current, delta):
        return extract_slice(model, current.slots, current.base_fingerprint)


def score_deltas(
    model,
    reference: ExpertSlice,
    deltas: Mapping[str, ExpertSlice],
    batches: Sequence[Batch],
    *,
    significance: float,
    general: Sequence[Batch] = (),
    scale: float = 1.0,
    batch_size: int = 8,
    on_scored: Callable[[int, int], object] | None = None,
) -> dict[str, Verdict]:
    """A Verdict per hotkey: score = loss(reference) − loss(reference + scale · delta), or why it was refused.
    `on_scored(done, of)` after each submission (with `model` holding `reference` again).

    `model` must hold `reference` (checked); it holds it again, bit for bit, on return. A gain
    that is not significant at `significance` (module docstring) is NO_IMPROVEMENT with score 0;
    with `general` batches the score is the gain minus the general loss's rise, and a score at or
    below 0 is NO_IMPROVEMENT too.
    """
    _check_holds(model, reference)
    base = batch_losses(model, batches, batch_size=batch_size)
    if base.first_non_finite is not None:
        i = base.first_non_finite
        raise ModelError(f"the current state's loss on eval batch {i} is {base.losses[i]}; the model or the eval data is broken.")
    general_base = batch_losses(model, general, batch_size=batch_size).mean if general else None
    verdicts = {}
    for hotkey, delta in deltas.items():
        step = delta if scale == 1.0 or delta.slots != reference.slots else linear_combination(reference, [(scale, delta)])
        verdicts[hotkey] = _score_one(model, reference, hotkey, step, batches, base, significance, general, general_base, batch_size)
        log.debug("%s: %s %s", hotkey, verdicts[hotkey].reject or "accepted", verdicts[hotkey].detail)
        if on_scored is not None:
            on_scored(len(verdicts), len(deltas))
    accepted = [v.score for v in verdicts.values() if v.accepted]
    log.info(
        "scored %d submissions on %d batches (%d tokens): %d significant at %g, best score %s",
        len(deltas), len(batches), sum(base.tokens), len(accepted), significance, f"{max(accepted):.4f}" if accepted else "none",
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


def _score_one(model, reference, hotkey, delta, batches, base: BatchLosses, significance: float,
               general: Sequence[Batch], general_base: float | None, batch_size: int) -> Verdict:
    if delta.slots != reference.slots or delta.kind != "delta":
        return Verdict(hotkey, Reject.WRONG_KEYS, f"a {delta.kind} slice over {len(delta.slots)} experts, not a delta over the {len(reference.slots)} assigned")
    try:
        with applied(model, reference, delta):
            got = batch_losses(model, batches, batch_size=batch_size)
            general_loss = batch_losses(model, general, batch_size=batch_size).mean if general and got.first_non_finite is None else None
    except ModelError as exc:
        if holds(model, reference):
            return Verdict(hotkey, Reject.WRONG_SHAPE, str(exc))
        raise
    bad = got.first_non_finite
    if bad is not None:
        return Verdict(hotkey, Reject.NON_FINITE_LOSS, f"eval batch {bad} of {len(batches)}: loss {got.losses[bad]}", base_loss=base.mean)
    gain = paired_gain(base.row_sums, got.row_sums, base.row_tokens)
    rise = 0.0
    if general_loss is not None:
        if not math.isfinite(general_loss):
            return Verdict(hotkey, Reject.NON_FINITE_LOSS, f"general loss {general_loss} with the delta applied", base_loss=base.mean)
        rise = max(0.0, general_loss - general_base)
    found = f"Δloss {gain.mean:.6f} ({base.mean:.6f} → {got.mean:.6f}), p = {gain.p_value:.3g}" + (
        f", general loss +{rise:.6f}" if general_loss is not None else "")
    if not gain.significant(significance):
        return Verdict(hotkey, Reject.NO_IMPROVEMENT, f"{found}: not significant at {significance}", 0.0, got.mean, base.mean,
                       gain.p_value, general_loss)
    if gain.mean - rise <= 0:
        return Verdict(hotkey, Reject.NO_IMPROVEMENT, f"{found}: the general loss rises more than the domain loss falls", 0.0,
                       got.mean, base.mean, gain.p_value, general_loss)
    return Verdict(hotkey, None, found, gain.mean - rise, got.mean, base.mean, gain.p_value, general_loss)


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
