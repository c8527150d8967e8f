"""Submission checks: every reason a validator refuses a delta before or instead of scoring it.

DESIGN.md "The network", step 5, and "What the closest existing system gets wrong": accept
exactly the assigned expert slices and nothing else (no embeddings, router, attention or norm
keys), with their shapes and dtypes, finite values, a bounded norm; and the earlier commitment
wins a copy dispute, so only the copier loses.

A refusal is a value (`Verdict` with a `Reject` reason and a detail naming the culprit), never an
exception (STYLE.md §5).

Copies (`find_copies`): a submission is a copy of another when their flattened deltas have a
cosine similarity ≥ 0.99 (computed in float64 over every tensor), or the same digest. Cosine,
not relative L2 distance, so that a scaled copy (0.5 × someone's delta) is caught too; 0.99
catches a copy with added noise up to about 14% of its norm (a more diluted copy is caught by
the shard evidence instead: it shows no training on the copier's own shard). Near-identical
submissions form a copy group, and the original is the one committed first: commitments are
hotkey-bound and a delta is revealed only after the commit deadline, so a copier cannot commit to
a delta before its owner did. Within one block no order is trustworthy (a copier can grind its
commitment hash below the original's), so there the original is the member whose delta shows the
strongest evidence of training on its own assigned shard (evidence.py): a copy improves its
source's shard, not the copier's. Without evidence (a caller that computed none) the lower
commitment hash breaks the tie.

Replays (`find_replays`): a delta that repeats an earlier round's accepted delta, or the update an
earlier round adopted (state after − state before), scores without training. A replay re-signed
by another hotkey (or for another round) has a new envelope and so a new store digest, so the
check is on the tensors: the same content digest (the envelope's `payload_sha256`, which hashes
names, dtypes, shapes and bytes but not the signature) or a cosine ≥ 0.99, as for copies.
"""

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch

from moeforge.model.experts import ExpertWeights
from moeforge.model.families import FAMILIES
from moeforge.model.slices import ExpertSlice
from moeforge.network.commitment import Malformed, decode_commitment, decode_reveal, verify_commitment
from moeforge.network.schedule import RoundSchedule

log = logging.getLogger(__name__)

Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]  # key → (shape, dtype) a submission must have
_LIST_AT_MOST = 8  # culprits named in one detail; the rest are counted


class Reject(StrEnum):
    BAD_SIGNATURE = "bad_signature"          # payload not signed by the hotkey it claims (transport)
    NO_COMMITMENT = "no_commitment"          # no commitment for this round on chain
    NO_REVEAL = "no_reveal"                  # committed but never revealed this round
    COMMITMENT_MISMATCH = "commitment_mismatch"  # revealed digest ≠ committed one for this hotkey and round
    LATE = "late"                            # committed or revealed outside the round's window
    MALFORMED = "malformed"                  # payload or tensors cannot be read
    TOO_LARGE = "too_large"                  # payload over the size the assignment implies (transport)
    WRONG_KEYS = "wrong_keys"                # not exactly the assigned slices
    WRONG_SHAPE = "wrong_shape"
    WRONG_DTYPE = "wrong_dtype"
    NON_FINITE = "non_finite"                # a NaN or inf in the delta itself
    NORM_BOUND = "norm_bound"                # global L2 norm over the bound
    ZERO_DELTA = "zero_delta"
    COPY = "copy"                            # same as (or near) an earlier commitment of this round
    REPLAY = "replay"                        # same as (or near) an earlier round's accepted delta or adopted update
    NON_FINITE_LOSS = "non_finite_loss"      # some eval batch's loss is NaN or inf with the delta applied
    NO_IMPROVEMENT = "no_improvement"        # scored: the gain is not significant, or the general loss eats it
    NO_EVIDENCE = "no_evidence"              # no sign of training on its own assigned shard (evidence.py)


@dataclass(frozen=True)
class Verdict:
    hotkey: str
    reject: Reject | None  # None: accepted and scored
    detail: str  # names the culprit: tensor, batch, block, original hotkey
    score: float | None = None  # gain over the free state, less any general-loss rise; 0.0 for NO_IMPROVEMENT; None if not scored
    loss: float | None = None  # loss of the free state + delta on the eval batches, when computed
    base_loss: float | None = None  # loss of the free state on the same batches
    p_value: float | None = None  # the paired test of the gain (significance.paired_gain)
    general_loss: float | None = None  # general loss with the delta applied, when the job guards general ability

    @property
    def accepted(self) -> bool:
        return self.reject is None


@dataclass(frozen=True)
class Revealed:
    """A submission whose commitment and reveal both check out; what copy detection and download need."""

    hotkey: str
    digest: str  # the delta's store address (sha256 hex)
    commitment: bytes
    commit_block: int
    reveal_block: int


def check_reveal(
    hotkey: str,
    round: int,
    schedule: RoundSchedule,
    *,
    commit: tuple[bytes | str, int] | None,
    reveal: tuple[bytes | str, int] | None,
) -> Revealed | Verdict:
    """The hotkey's (payload, block) commit and reveal for `round` → Revealed, or the Verdict refusing them."""
    if commit is None:
        return Verdict(hotkey, Reject.NO_COMMITMENT, f"no commitment on chain for round {round}")
    got = decode_commitment(commit[0])
    if isinstance(got, Malformed):
        return Verdict(hotkey, Reject.MALFORMED, f"commitment at block {commit[1]}: {got.reason}")
    if got.round != round:
        return Verdict(hotkey, Reject.NO_COMMITMENT, f"latest commitment (block {commit[1]}) is for round {got.round}, not {round}")
    if not schedule.commit_counts(round, commit[1]):
        return Verdict(
            hotkey, Reject.LATE,
            f"committed at block {commit[1]}, outside round {round}'s window "
            f"{schedule.round_start(round)}..{schedule.commit_deadline(round)}",
        )
    if reveal is None:
        return Verdict(hotkey, Reject.NO_REVEAL, f"committed at block {commit[1]} but revealed nothing for round {round}")
    shown = decode_reveal(reveal[0])
    if isinstance(shown, Malformed):
        return Verdict(hotkey, Reject.MALFORMED, f"reveal at block {reveal[1]}: {shown.reason}")
    if shown.round != round:
        return Verdict(hotkey, Reject.NO_REVEAL, f"latest reveal (block {reveal[1]}) is for round {shown.round}, not {round}")
    if not schedule.reveal_counts(round, reveal[1]):
        return Verdict(
            hotkey, Reject.LATE,
            f"revealed at block {reveal[1]}, outside round {round}'s window "
            f"{schedule.round_start(round)}..{schedule.reveal_deadline(round)}",
        )
    if not verify_commitment(got.commitment, shown.digest, hotkey, round):
        return Verdict(
            hotkey, Reject.COMMITMENT_MISMATCH,
            f"revealed digest {shown.digest[:16]}… does not match the commitment at block {commit[1]} for this hotkey and round",
        )
    return Revealed(hotkey, shown.digest, got.commitment, commit[1], reveal[1])


def expected_layout(current: ExpertSlice) -> Layout:
    """The keys, shapes and dtypes of a delta for `current`'s slots (dtypes as `make_delta` writes them)."""
    out = {}
    for key, t in current.state_dict().items():
        out[key] = (tuple(t.shape), torch.float64 if t.dtype == torch.float32 else torch.float32)
    return out


def relative_norm_bound(current: ExpertSlice, fraction: float) -> float:
    """A norm bound of `fraction` × the global L2 norm of the current experts' weights."""
    return fraction * global_norm(current.state_dict())


def check_delta(tensors: Mapping[str, object], expected: Layout, *, norm_bound: float, hotkey: str = "") -> Verdict | None:
    """None if `tensors` is exactly the assigned delta and sane; else the first failing check's Verdict.

    Order: keys, shapes, dtypes, finiteness, norm, zero. Each detail lists every culprit of its check.
    """
    not_tensors = sorted(k for k, t in tensors.items() if not isinstance(t, torch.Tensor))
    if not_tensors:
        return Verdict(hotkey, Reject.MALFORMED, "not tensors: " + _names(not_tensors))
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + _names(missing))
        if unexpected:
            parts.append("unexpected " + _names([f"{k} ({_kind_of(k)})" for k in unexpected]))
        return Verdict(hotkey, Reject.WRONG_KEYS, "; ".join(parts))
    shapes = [f"{k} has shape {tuple(t.shape)}, expected {expected[k][0]}" for k, t in sorted(tensors.items()) if tuple(t.shape) != tuple(expected[k][0])]
    if shapes:
        return Verdict(hotkey, Reject.WRONG_SHAPE, _names(shapes))
    dtypes = [f"{k} is {_dtype(t.dtype)}, expected {_dtype(expected[k][1])}" for k, t in sorted(tensors.items()) if t.dtype != expected[k][1]]
    if dtypes:
        return Verdict(hotkey, Reject.WRONG_DTYPE, _names(dtypes))
    bad = []
    for k, t in sorted(tensors.items()):
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        if nan or inf:
            bad.append(f"{k}: {nan + inf} non-finite values ({nan} nan, {inf} inf)")
    if bad:
        return Verdict(hotkey, Reject.NON_FINITE, _names(bad))
    norms = {k: float(t.double().norm()) for k, t in tensors.items()}
    norm = math.sqrt(sum(n * n for n in norms.values()))
    if norm > norm_bound:
        largest = max(norms, key=norms.__getitem__)
        return Verdict(
            hotkey, Reject.NORM_BOUND,
            f"global L2 norm {norm:.4g} exceeds the bound {norm_bound:.4g} (largest tensor: {largest}, norm {norms[largest]:.4g})",
        )
    if norm == 0.0:
        return Verdict(hotkey, Reject.ZERO_DELTA, f"all {sum(t.numel() for t in tensors.values())} values are zero")
    return None


def delta_slice(tensors: Mapping[str, torch.Tensor], current: ExpertSlice) -> ExpertSlice:
    """A submission's tensors (already passed `check_delta`) as a delta slice over `current`'s slots."""
    block = FAMILIES[current.model_type].block
    weights = {}
    for slot in current.slots:
        prefix = f"model.layers.{slot.layer}.{block}.experts.{slot.expert}."
        parts = {_field(part): tensors[prefix + part] for part in current.weights[slot].tensors()}
        weights[slot] = ExpertWeights(**parts)
    return ExpertSlice(kind="delta", model_type=current.model_type, base_fingerprint=current.base_fingerprint, weights=weights)


@dataclass(frozen=True, eq=False)
class Submission:
    """One checked submission of a round, as copy detection sees it."""

    hotkey: str
    commit_block: int
    commitment: bytes  # the 32-byte commitment hash: breaks ties within a block
    digest: str  # the delta's store address
    tensors: Mapping[str, torch.Tensor]
    content_sha256: str = ""  # the signed envelope's payload_sha256: the tensors' digest, whoever signed them


@dataclass(frozen=True, eq=False)
class Earlier:
    """A delta from an earlier round that a new submission must not repeat."""

    source: str  # names it in a verdict: "round 2's accepted delta by 5F…" or "round 2's adopted update"
    hotkey: str | None  # the miner it credits, if any
    tensors: Mapping[str, torch.Tensor]
    content_sha256: str = ""


COPY_COSINE = 0.99


def copy_groups(submissions: Sequence[Submission], *, cosine: float = COPY_COSINE) -> list[list[str]]:
    """The round's submissions partitioned into copy groups (hotkeys in commit order): two submissions
    are in one group when their digests are equal or their deltas' cosine is ≥ `cosine`, and groups are
    closed under that relation. Singletons included."""
    ordered = sorted(submissions, key=lambda s: (s.commit_block, s.commitment))
    norms = [global_norm(s.tensors) for s in ordered]
    parent = list(range(len(ordered)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, sub in enumerate(ordered):
        for j in range(i):
            first = ordered[j]
            similarity = 1.0 if first.digest == sub.digest else _cosine(first.tensors, sub.tensors, norms[j], norms[i])
            if similarity >= cosine:
                log.info("%s (block %d) and %s (block %d) are near-identical: cosine %.5f", first.hotkey, first.commit_block,
                         sub.hotkey, sub.commit_block, similarity)
                parent[root(i)] = root(j)
    groups: dict[int, list[str]] = {}
    for i, sub in enumerate(ordered):
        groups.setdefault(root(i), []).append(sub.hotkey)
    return list(groups.values())


def find_copies(
    submissions: Sequence[Submission],
    *,
    evidence: Mapping[str, float] | None = None,
    earlier_digests: Mapping[str, str] | None = None,
    cosine: float = COPY_COSINE,
) -> dict[str, str]:
    """{copier hotkey: original hotkey} for this round's submissions (module docstring).

    In each copy group the original is committed in the group's earliest block; among several
    committed in that block, the one with the strongest `evidence` (its own-shard evidence
    statistic), or without evidence the lowest commitment hash. `earlier_digests` maps the
    digests of earlier rounds' accepted deltas to their miners' hotkeys; a resubmission of one is
    flagged with that miner as the original.
    """
    earlier_digests = earlier_digests or {}
    copies: dict[str, str] = {}
    for sub in submissions:
        if sub.digest in earlier_digests:
            copies[sub.hotkey] = earlier_digests[sub.digest]
            log.info("%s replays an earlier round's delta %s… by %s", sub.hotkey, sub.digest[:12], earlier_digests[sub.digest])
    rest = [s for s in submissions if s.hotkey not in copies]
    for group in copy_groups(rest, cosine=cosine):
        if len(group) < 2:
            continue
        block = {s.hotkey: s.commit_block for s in rest}
        first = [h for h in group if block[h] == min(block[g] for g in group)]  # group is in commit order
        original = first[0] if evidence is None else max(first, key=lambda h: (evidence.get(h, -math.inf), -first.index(h)))
        for hotkey in group:
            if hotkey != original:
                copies[hotkey] = original
    return copies


def find_replays(submissions: Sequence[Submission], earlier: Sequence[Earlier], *, cosine: float = COPY_COSINE) -> dict[str, str]:
    """{hotkey: detail} for this round's submissions that repeat an earlier delta (module docstring)."""
    earlier_norms = [global_norm(e.tensors) for e in earlier]
    replays: dict[str, str] = {}
    for sub in submissions:
        norm = global_norm(sub.tensors)
        for old, old_norm in zip(earlier, earlier_norms):
            if sub.content_sha256 and sub.content_sha256 == old.content_sha256:
                replays[sub.hotkey] = f"the same tensors as {old.source} (content sha256 {sub.content_sha256[:12]}…), re-signed"
            else:
                if sub.tensors.keys() < old.tensors.keys():  # one part of an earlier delta over more experts
                    part = {k: old.tensors[k] for k in sub.tensors}
                    similarity = _cosine(part, sub.tensors, global_norm(part), norm)
                else:
                    similarity = _cosine(old.tensors, sub.tensors, old_norm, norm)
                if similarity < cosine:
                    continue
                replays[sub.hotkey] = f"a replay of {old.source}: cosine {similarity:.5f} ≥ {cosine}"
            log.info("%s: %s", sub.hotkey, replays[sub.hotkey])
            break
    return replays


def global_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of all the tensors flattened into one vector, computed in float64."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def _cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], norm_a: float, norm_b: float) -> float:
    """Cosine similarity of two deltas flattened over the same keys; 0 when they differ in layout or one is zero."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a) or norm_a == 0 or norm_b == 0:
        return 0.0
    dot = sum(float(torch.dot(a[k].double().flatten(), b[k].double().flatten())) for k in a)
    return dot / (norm_a * norm_b)


_KINDS = (  # (pattern, what the key is) for keys outside the assignment; first match wins
    (re.compile(r"embed"), "non-expert: embeddings"),
    (re.compile(r"lm_head"), "non-expert: output head"),
    (re.compile(r"shared_expert"), "non-expert: shared experts"),
    (re.compile(r"\.(gate|router)\.(weight|bias)$|e_score_correction_bias"), "non-expert: router"),
    (re.compile(r"norm"), "non-expert: norm"),
    (re.compile(r"attn|attention"), "non-expert: attention"),
    (re.compile(r"\.(mlp|feed_forward)\.(gate|up|down)_proj\."), "non-expert: dense MLP"),
    (re.compile(r"\.experts\.\d+\."), "a routed expert not assigned"),
    (re.compile(r"\.experts\."), "a whole layer's fused experts"),
)


def _kind_of(key: str) -> str:
    return next((kind for pattern, kind in _KINDS if pattern.search(key)), "not an assigned expert key")


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_AT_MOST])
    return shown + (f" and {len(items) - _LIST_AT_MOST} more" if len(items) > _LIST_AT_MOST else "")


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _field(part: str) -> str:
    """'gate_proj.weight' → 'gate', 'down_proj.bias' → 'down_bias' (ExpertWeights fields)."""
    name, kind = part.split("_proj.")
    return name if kind == "weight" else f"{name}_bias"
