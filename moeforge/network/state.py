"""Expert states between rounds: packing them, and which one is each round's base (the most stake behind it).

DESIGN.md "The network", step 6: "the next base is the state backed by the most validator stake".
A state travels packed by `transport.pack(kind="state")`, signed by whoever produced it (the
owner for round 0, a validator after). Two honest validators that reach the same state sign
different bytes, so a state is known by its **content** digest (the envelope's `payload_sha256`,
a hash of the tensors alone), and each validator's on-chain result names that digest and its
round report, which gives the store address of its own packed copy.

The base of round r is read from the chain as of `round_end(r − 1)`: group the results that
validators with a permit committed for round r − 1 by state, sum their stake, take the largest
(ties to the lower digest, so every role picks the same one). No result for r − 1: the base of
r − 1 carries over; no result at all: the owner's initial state.

With an outer optimizer that keeps momentum (outer.py), a state carries its momentum buffer as
further tensors named `outer_momentum.<expert key>` (in a delta's dtype), so the content digest
covers both and a validator resuming from a state resumes its optimizer too. A state without them
(the owner's initial state, or a job with momentum 0) has zero momentum.
"""

import json
import logging
from dataclasses import dataclass, field

import torch
from pydantic import ValidationError

from moeforge.chain.protocol import Chain
from moeforge.errors import ArtifactNotFound, PayloadError, StoreError
from moeforge.model.slices import ExpertSlice
from moeforge.network.checks import delta_slice, expected_layout
from moeforge.network.commitment import ResultPayload, decode_result
from moeforge.network.history import RoundReport
from moeforge.network.job import JobSpec
from moeforge.network.safetensors_header import Limits
from moeforge.network.transport import MOMENTUM_PREFIX, pack, unpack
from moeforge.store.protocol import Store

log = logging.getLogger(__name__)

HEADER_SLACK_BYTES = 1 << 20  # a payload's header (names, shapes, signed envelope) is far below this
MAX_REPORT_BYTES = 16 << 20


@dataclass(frozen=True)
class StateRef:
    """Where a round's base state comes from."""

    sha256: str  # content digest of the tensors (the identity of the state)
    digest: str  # store address of one packed copy
    round: int  # the round whose outcome it is; −1 for the owner's initial state
    backers: dict[str, float] = field(default_factory=dict)  # validator hotkey → stake (empty for the initial state)


@dataclass(frozen=True)
class RoundResults:
    """Every counted validator result for one round, as of its last block."""

    round: int
    results: dict[str, ResultPayload]  # validator hotkey → its result
    stake: dict[str, float]  # validator hotkey → stake

    def winner(self) -> tuple[str, dict[str, float]] | None:
        """(state sha256, its backers → stake) with the most stake; ties to the lower digest; None if empty."""
        totals: dict[str, float] = {}
        for hotkey, result in self.results.items():
            totals[result.state_sha256] = totals.get(result.state_sha256, 0.0) + self.stake[hotkey]
        if not totals:
            return None
        best = min(totals, key=lambda sha: (-totals[sha], sha))
        backers = {h: self.stake[h] for h, result in self.results.items() if result.state_sha256 == best}
        return best, backers


def state_limits(reference: ExpertSlice, *, momentum: bool = False) -> Limits:
    """Transport limits for a state or delta over `reference`'s slots: its exact float64 size (twice, for a state
    with its momentum) plus header slack."""
    payload = sum(t.numel() * 8 for t in reference.state_dict().values())
    return Limits(max_total_bytes=payload * (2 if momentum else 1) + HEADER_SLACK_BYTES)


def pack_state(piece: ExpertSlice, *, keypair, job_id: str, round: int, momentum: ExpertSlice | None = None) -> tuple[bytes, str]:
    """(packed bytes, content sha256) of an expert state (and its outer momentum, if any), signed by `keypair`."""
    tensors = piece.state_dict()
    if momentum is not None:
        tensors.update({MOMENTUM_PREFIX + k: t for k, t in momentum.state_dict().items()})
    data = pack(tensors, keypair=keypair, job=job_id, round=round, kind="state")
    envelope, _ = unpack(data, limits=Limits(max_total_bytes=len(data)))
    return data, envelope.payload_sha256


def unpack_state(data: bytes, *, job: JobSpec, reference: ExpertSlice, expect_sha256: str) -> ExpertSlice:
    """The expert state of `unpack_outer_state`, without its momentum."""
    return unpack_outer_state(data, job=job, reference=reference, expect_sha256=expect_sha256)[0]


def unpack_outer_state(data: bytes, *, job: JobSpec, reference: ExpertSlice,
                       expect_sha256: str) -> tuple[ExpertSlice, ExpertSlice | None]:
    """(state, outer momentum or None) fetched from the store, checked against the job: PayloadError unless it is
    exactly `expect_sha256`, kind "state", for this job, over `reference`'s keys, shapes and dtypes (and, with
    momentum, the same keys under MOMENTUM_PREFIX in a delta's dtypes), all finite."""
    envelope, tensors = unpack(data, limits=state_limits(reference, momentum=True), expect_job=job.job_id, expect_kind="state")
    where = f"state {expect_sha256[:12]}… (signed by {envelope.hotkey}, round {envelope.round})"
    if envelope.payload_sha256 != expect_sha256:
        raise PayloadError(f"{where}: its content digest is {envelope.payload_sha256[:12]}…, not the one the chain names.")
    expected = {k: (tuple(t.shape), t.dtype) for k, t in reference.state_dict().items()}
    if any(k.startswith(MOMENTUM_PREFIX) for k in tensors):
        if job.outer_momentum == 0:
            raise PayloadError(f"{where}: carries outer momentum, but job {job.job_id}'s outer optimizer keeps none.")
        expected.update({MOMENTUM_PREFIX + k: layout for k, layout in expected_layout(reference).items()})
    got = {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()}
    if got != expected:
        missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
        raise PayloadError(f"{where}: does not fit the job's experts (missing {missing[:3]}, unexpected {extra[:3]}, "
                           f"wrong shape or dtype {wrong[:3]}).")
    bad = sorted(k for k, t in tensors.items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise PayloadError(f"{where}: non-finite values in {bad[:3]}.")
    experts = {k: t for k, t in tensors.items() if not k.startswith(MOMENTUM_PREFIX)}
    moments = {k.removeprefix(MOMENTUM_PREFIX): t for k, t in tensors.items() if k.startswith(MOMENTUM_PREFIX)}
    weights = delta_slice(experts, reference).weights
    state = ExpertSlice(kind="experts", model_type=reference.model_type, base_fingerprint=reference.base_fingerprint, weights=weights)
    return state, (delta_slice(moments, reference) if moments else None)


def round_results(chain: Chain, job: JobSpec, r: int) -> RoundResults:
    """The results validators with a permit committed for round r, read as of its last block."""
    at = job.schedule.round_end(r)
    stake = {n.hotkey: n.stake for n in chain.metagraph().validators}
    results = {}
    for hotkey, commitment in chain.commitments(at_block=at).items():
        if hotkey not in stake:
            continue
        payload = decode_result(commitment.data)
        if isinstance(payload, ResultPayload) and payload.round == r:
            results[hotkey] = payload
    return RoundResults(r, results, {h: stake[h] for h in results})


def base_state(chain: Chain, store: Store, job: JobSpec, r: int) -> StateRef:
    """The state round r starts from (module docstring); needs the chain at or past `round_end(r − 1)`."""
    for previous in range(r - 1, -1, -1):
        won = backed_report(store, round_results(chain, job, previous))
        if won is not None:
            sha256, backers, report, _ = won
            return StateRef(sha256=sha256, digest=report.state_digest, round=previous, backers=backers)
    return StateRef(sha256=job.initial_state_sha256, digest=job.initial_state, round=-1)


def backed_report(store: Store, results: RoundResults) -> tuple[str, dict[str, float], RoundReport, str] | None:
    """(state sha256, its backers, the report of its best-staked backer, that report's digest), or None.

    Backers are tried by stake (ties to the lower hotkey) until one's report is readable and names
    the state; PayloadError if none is, since then no one can fetch the state the stake chose.
    """
    won = results.winner()
    if won is None:
        return None
    sha256, backers = won
    problems = []
    for hotkey in sorted(backers, key=lambda h: (-backers[h], h)):
        digest = results.results[hotkey].report
        try:
            report = read_report(store, digest)
        except (PayloadError, ArtifactNotFound, StoreError) as exc:
            problems.append(f"{hotkey}: {exc}")
            continue
        if report.state_sha256 == sha256 and report.round == results.round:
            return sha256, backers, report, digest
        problems.append(f"{hotkey}: its report is for round {report.round}, state {report.state_sha256[:12]}…")
    raise PayloadError(f"round {results.round}: no backer of state {sha256[:12]}… has a usable report: " + "; ".join(problems))


def fetch_state(store: Store, ref: StateRef, *, job: JobSpec, reference: ExpertSlice) -> ExpertSlice:
    """The state `ref` names, fetched and checked (unpack_state)."""
    return fetch_outer_state(store, ref, job=job, reference=reference)[0]


def fetch_outer_state(store: Store, ref: StateRef, *, job: JobSpec, reference: ExpertSlice) -> tuple[ExpertSlice, ExpertSlice | None]:
    """(state, outer momentum or None) that `ref` names, fetched and checked (unpack_outer_state)."""
    if store.size(ref.digest) > state_limits(reference, momentum=True).max_total_bytes:
        raise PayloadError(f"state {ref.digest[:12]}… is {store.size(ref.digest):,} bytes, too large for the job's experts.")
    return unpack_outer_state(store.get(ref.digest), job=job, reference=reference, expect_sha256=ref.sha256)


def read_report(store: Store, digest: str) -> RoundReport:
    """A round report from the store; PayloadError if it is not one."""
    if store.size(digest) > MAX_REPORT_BYTES:
        raise PayloadError(f"round report {digest[:12]}… is {store.size(digest):,} bytes, over {MAX_REPORT_BYTES:,}.")
    try:
        return RoundReport.model_validate(json.loads(store.get(digest)))
    except (ValueError, ValidationError) as exc:
        raise PayloadError(f"round report {digest[:12]}… is not a valid report: {str(exc).splitlines()[0]}") from None
