"""One round as a validator judges it: read the chain, fetch and check every submission, score, merge.

DESIGN.md "The network", steps 5–6, in the order they run:

1. `read_submissions`: each hotkey's commitment as of the commit deadline and reveal as of the
   reveal deadline (`at_block`, so nothing posted later counts) → `Revealed`, or a Verdict.
2. `eval_batches`: the held-out rows drawn with the seed block's hash: a scoring sample and a
   disjoint merge sample, the same for every validator with the same held-out split.
3. `fetch_submission`: size-limited download, strict signed unpack (`transport.unpack`), then
   `check_delta` (exactly the assigned slices, shapes, dtypes, finite, norm bound, non-zero).
4. `find_replays` against the deltas this validator accepted in earlier rounds and the update the
   last round adopted (by tensor content, so a re-signed replay with a new digest is caught).
5. With the model holding the free state (the current state plus the outer optimizer's momentum
   step, outer.py): `score_deltas` on the scoring sample (a significant paired gain, less any
   general-loss rise; each delta is swapped in and out in place), then, for the significant ones,
   `shard_evidence` on each delta's own shard rows against control rows (train rows in nobody's
   shard this round, `control_rows`), its peers being the other
   significant deltas (evidence.py; NO_EVIDENCE when not significant), and `find_copies` over all
   of them (in a copy group the earliest commitment is the original, the strongest evidence among
   those of its block; the others are COPY, whatever they scored).
6. `merge` the top-k, turn the candidates into outer-optimizer steps, `choose_state` on the merge
   sample under the general guard (a backtracking line search over the step's scale), and credit
   an adopted merge by leave-one-out (merge.py).

Before all that, `audit_previous` compares the states other validators published for the
previous round with this validator's own: a different state from the same base and seed is a
disagreement, recorded in the round report (the stake-backed base already out-votes a
low-stake validator; the flag says who to look at).

Nothing here writes to the chain or the store; `validator.py` publishes what `judge_round` returns.
A submission whose handling raises an unexpected error is logged with its traceback and recorded
in `errors`, never silently dropped and never blamed on the miner as a rejection.
"""

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch

from moeforge.chain.protocol import Chain
from moeforge.data.packing import Packed
from moeforge.errors import ArtifactNotFound, PayloadError, StoreError
from moeforge.model.slices import ExpertSlice, apply_slice, linear_combination, padded, restricted
from moeforge.network.checks import (
    Earlier,
    Reject,
    Revealed,
    Submission,
    Verdict,
    check_delta,
    check_reveal,
    copy_groups,
    delta_slice,
    expected_layout,
    find_copies,
    find_replays,
    relative_norm_bound,
)
from moeforge.network.commitment import CommitPayload, RevealPayload, decode_commitment, decode_reveal
from moeforge.network.history import VerdictEntry
from moeforge.network.job import JobSpec
from moeforge.network.evidence import Evidence, shard_evidence
from moeforge.network.merge import GeneralGuard, MergeDecision, choose_state, leave_one_out, merge
from moeforge.network.observe import Observer
from moeforge.network.outer import OuterOptimizer
from moeforge.network.scoring import Batch, score_deltas, state_with
from moeforge.network.shards import control_sample, eval_samples, miner_shard, rows_to_batches
from moeforge.network.safetensors_header import Limits
from moeforge.network.state import base_state, fetch_state, read_report, round_results, state_limits
from moeforge.network.transport import unpack
from moeforge.store.protocol import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class RoundJudgement:
    """Everything a validator decided in one round, before it publishes anything."""

    state: ExpertSlice  # the resulting expert state (the current one when nothing is adopted)
    momentum: ExpertSlice | None  # the outer optimizer's momentum after the round (None: it keeps none)
    decision: MergeDecision | None  # None when no submission scored significantly
    verdicts: dict[str, Verdict]  # hotkey → verdict, for every submission judged
    entries: list[VerdictEntry]  # the same, with digests, commit blocks and evidence, in commit order
    copies: dict[str, str]  # copier → original
    replays: dict[str, str]  # replayer → what it repeats
    disagreements: dict[str, str]  # validator hotkey → how its previous-round state differs from this validator's
    accepted: list[str]  # the merge cohort, best first
    digests: dict[str, str]  # hotkey → revealed digest, for submissions that were fetched
    errors: dict[str, str] = field(default_factory=dict)  # hotkey → unexpected error while judging it
    score_base_loss: float | None = None
    evidence: dict[str, Evidence | None] = field(default_factory=dict)


def judge_round(
    model,
    current: ExpertSlice,
    *,
    momentum: ExpertSlice | None = None,
    chain: Chain,
    store: Store,
    job: JobSpec,
    round: int,
    heldout: Packed,
    train: Packed | None = None,
    guard: GeneralGuard | None = None,
    earlier_digests: Mapping[str, str],
    self_hotkey: str,
    observer: Observer,
    timings: dict[str, float],
) -> RoundJudgement:
    """Judge round `round`; `model` must hold `current` and holds it again, bit for bit, on return.

    `train`: the job's train rows, for the shard evidence (none asked without them); `guard`: the general
    drift budget (none enforced without it); `momentum`: the outer optimizer's, as the base state carries it."""
    score_batches, merge_batches = eval_batches(chain, job, round, heldout)
    outer = OuterOptimizer.of(job)
    with observer.phase("read_chain", timings):
        found = read_submissions(chain, job, round, exclude={self_hotkey})
        disagreements = audit_previous(chain, store, job, round, self_hotkey)
    verdicts: dict[str, Verdict] = {h: v for h, v in found.items() if isinstance(v, Verdict)}
    revealed = sorted((v for v in found.values() if isinstance(v, Revealed)), key=lambda s: (s.commit_block, s.commitment))
    with observer.phase("fetch_check", timings):
        submissions, refused, errors = fetch_all(store, revealed, job=job, round=round, current=current, observer=observer)
    verdicts.update(refused)
    with observer.phase("copies", timings):
        earlier = earlier_deltas(chain, store, job, round, current, earlier_digests)
        replays = find_replays(submissions, earlier)
        verdicts.update({h: Verdict(h, Reject.REPLAY, detail) for h, detail in replays.items()})
        rest = [s for s in submissions if s.hotkey not in replays]
        deltas = {s.hotkey: padded(delta_slice(s.tensors, restricted(current, job.assigned_slots(round, s.hotkey))), current)
                  for s in rest}
        previous = next((delta_slice(e.tensors, current) for e in earlier if e.hotkey is None), None)
    free = outer.free_step(current, momentum)
    reference = current if free is None else state_with(model, current, free)
    apply_slice(model, reference)
    try:
        with observer.phase("score", timings):
            scored = score_deltas(model, reference, deltas, score_batches, significance=job.significance,
                                  general=guard.batches if guard else (), scale=outer.score_scale, batch_size=job.eval_batch_rows,
                                  on_scored=lambda done, of: observer.reached("mid_score") if 2 * done >= of else None,
                                  ) if deltas else {}
        significant = [s for s in rest if scored[s.hotkey].accepted]
        with observer.phase("evidence", timings):
            evidence = shard_evidence(model, reference, {s.hotkey: deltas[s.hotkey] for s in significant}, copy_groups(significant),
                                      train, control_rows(chain, job, round, train, found), job=job, round=round,
                                      fallback_peer=previous, batch_size=job.eval_batch_rows,
                                      ) if train is not None and job.evidence_rows and significant else {}
    finally:
        apply_slice(model, current)
    copies = find_copies(rest, evidence={h: e.statistic if e else -math.inf for h, e in evidence.items()} if evidence else None)
    scored.update({c: Verdict(c, Reject.COPY, _copy_detail(c, o, rest, evidence)) for c, o in copies.items()})
    scored.update({h: Verdict(h, Reject.NO_EVIDENCE, f"{e.describe()}: not significant at {job.evidence_significance}")
                   for h, e in evidence.items() if h not in copies and e is not None and not e.significant(job.evidence_significance)})
    verdicts.update(scored)
    with observer.phase("merge", timings):
        state, next_momentum, decision, accepted = merge_round(model, current, momentum, deltas, scored, merge_batches, job,
                                                               parts={h: job.part_of(round, h) for h in deltas},
                                                               guard=guard, midway=lambda: observer.reached("mid_merge"))
    blocks = {rev.hotkey: rev.commit_block for rev in revealed}
    digests = {rev.hotkey: rev.digest for rev in revealed}
    entries = [VerdictEntry.of(verdicts[h], digests.get(h), blocks.get(h), evidence.get(h))
               for h in sorted(verdicts, key=lambda h: (blocks.get(h, 1 << 62), h))]
    base_losses = [v.base_loss for v in scored.values() if v.base_loss is not None]
    return RoundJudgement(
        state=state, momentum=next_momentum, decision=decision, verdicts=verdicts, entries=entries, copies=copies,
        replays=replays, disagreements=disagreements, accepted=accepted, digests=digests, errors=errors,
        score_base_loss=base_losses[0] if base_losses else None, evidence=evidence,
    )


def _copy_detail(copier: str, original: str, submissions: list[Submission], evidence: Mapping[str, Evidence | None]) -> str:
    block = {s.hotkey: s.commit_block for s in submissions}
    if block[original] < block[copier]:
        return f"a copy of {original}'s submission, committed in an earlier block ({block[original]} < {block[copier]})"
    if evidence.get(original) and evidence.get(copier):
        return (f"a copy of {original}'s submission committed in the same block; the original shows the stronger own-shard "
                f"evidence ({evidence[original].statistic:+.5f} vs {evidence[copier].statistic:+.5f} nats/token)")
    return f"a copy of {original}'s submission committed in the same block (the lower commitment hash wins without evidence)"


def fetch_all(store: Store, revealed: list[Revealed], *, job: JobSpec, round: int, current: ExpertSlice,
              observer: Observer) -> tuple[list[Submission], dict[str, Verdict], dict[str, str]]:
    """(submissions that passed every check, in commit order; verdicts refusing the others; unexpected errors)."""
    max_bytes = state_limits(current).max_total_bytes
    submissions, refused, errors = [], {}, {}
    for rev in revealed:
        part = restricted(current, job.assigned_slots(round, rev.hotkey))  # exactly the part assigned to this miner
        layout, bound = expected_layout(part), relative_norm_bound(part, job.norm_bound)
        try:
            got = fetch_submission(store, rev, job=job, round=round, layout=layout, norm_bound=bound, max_bytes=max_bytes)
        except Exception as exc:  # noqa: BLE001 (one submission's unexpected failure must not end the round)
            observer.failure("fetch_check", round, exc)
            errors[rev.hotkey] = f"{type(exc).__name__}: {exc}"
            continue
        if isinstance(got, Verdict):
            refused[rev.hotkey] = got
        else:
            submissions.append(got)
    return submissions, refused, errors


def merge_round(model, current: ExpertSlice, momentum: ExpertSlice | None, deltas: Mapping[str, ExpertSlice],
                scored: Mapping[str, Verdict], merge_batches: list[Batch], job: JobSpec, *, parts: Mapping[str, int] | None = None,
                guard: GeneralGuard | None = None, midway=None) -> tuple[ExpertSlice, ExpertSlice | None, MergeDecision | None, list[str]]:
    """(next state, next outer momentum, the merge decision, the merge cohort best first).

    The merged and the best single update become outer-optimizer steps, `choose_state` adopts one
    (shrunk to fit the guard) or neither, and an adopted merge credits its members by leave-one-out.
    `parts`: hotkey → the part of the experts its delta covers (merged part by part); None: one part.
    Nothing scored: the current state and momentum."""
    ranked = [(h, scored[h].score, delta) for h, delta in deltas.items() if scored[h].accepted]  # commit order breaks ties
    if not ranked:
        return current, momentum, None, []
    candidate = merge(current, ranked, top_k=job.top_k, parts=parts)
    outer = OuterOptimizer.of(job)
    steps = {"merged": outer.step(current, momentum, candidate.merged), "single": outer.step(current, momentum, candidate.best_single)}
    state, decision = choose_state(model, current, steps, merge_batches, best_hotkey=candidate.best_hotkey, guard=guard,
                                   margin=job.merge_margin, batch_size=job.eval_batch_rows, midway=midway)
    cohort = sorted(candidate.coefficients, key=lambda h: -scored[h].score)
    if decision.choice == "none":
        return state, momentum, decision, cohort
    update = candidate.merged if decision.choice == "merged" else candidate.best_single
    if decision.choice == "merged":
        adopted = steps["merged"] if decision.scale == 1.0 else linear_combination(current, [(decision.scale, steps["merged"])])
        terms = {h: (decision.scale * outer.score_scale * c, candidate.deltas[h]) for h, c in candidate.coefficients.items()}
        marginal, shares = leave_one_out(model, current, adopted, terms, merge_batches, decision.merged_loss,
                                         scores={h: scored[h].score for h in terms}, batch_size=job.eval_batch_rows)
        decision = replace(decision, contributions=shares, marginal=marginal)
    return state, outer.next_momentum(current, momentum, update, decision.scale), decision, cohort


def earlier_deltas(chain: Chain, store: Store, job: JobSpec, round: int, current: ExpertSlice,
                   accepted_digests: Mapping[str, str]) -> list[Earlier]:
    """What a round-`round` submission must not repeat: the deltas accepted in earlier rounds
    (`accepted_digests`: store address → miner) and the update the round before adopted."""
    limits = Limits(max_total_bytes=state_limits(current).max_total_bytes)
    out = []
    for digest, hotkey in sorted(accepted_digests.items()):
        try:
            envelope, tensors = unpack(store.get(digest), limits=limits, expect_job=job.job_id, expect_kind="delta")
        except (ArtifactNotFound, StoreError, PayloadError) as exc:
            log.warning("round %d: earlier accepted delta %s… by %s is unreadable, not checked for replays: %s", round, digest[:12], hotkey, exc)
            continue
        out.append(Earlier(f"round {envelope.round}'s accepted delta by {hotkey}", hotkey, tensors, envelope.payload_sha256))
    try:
        update = adopted_update(chain, store, job, round, current)
    except (ArtifactNotFound, StoreError, PayloadError) as exc:  # the base itself was readable; an older state need not be
        log.warning("round %d: the previous round's adopted update is unreadable, not checked for replays: %s", round, exc)
        update = None
    if update is not None:
        out.append(update)
    return out


def adopted_update(chain: Chain, store: Store, job: JobSpec, round: int, current: ExpertSlice) -> Earlier | None:
    """The update the round that produced `current` adopted (its state − its base), if it changed anything."""
    ref = base_state(chain, store, job, round)
    if ref.round < 0:
        return None
    before_ref = base_state(chain, store, job, ref.round)
    if before_ref.sha256 == ref.sha256:
        return None
    before = fetch_state(store, before_ref, job=job, reference=current).state_dict()
    update = {}
    for key, now in current.state_dict().items():
        dtype = torch.float64 if now.dtype == torch.float32 else torch.float32  # the dtype a delta has (expected_layout)
        update[key] = now.to(torch.float64).sub(before[key].to(torch.float64)).to(dtype)
    return Earlier(f"round {ref.round}'s adopted update", None, update)


def audit_previous(chain: Chain, store: Store, job: JobSpec, round: int, self_hotkey: str) -> dict[str, str]:
    """{validator: detail} for each validator whose round − 1 state differs from this one's for the same inputs.

    Same inputs: the same base state and seed (both in the reports). A validator whose report
    cannot be read is flagged too; one that started from another base is only logged.
    """
    if round == 0:
        return {}
    previous = round - 1
    results = round_results(chain, job, previous)
    mine = results.results.get(self_hotkey)
    if mine is None:
        return {}
    try:
        my_report = read_report(store, mine.report)
    except (PayloadError, ArtifactNotFound, StoreError) as exc:
        log.warning("round %d: cannot read this validator's own round %d report, so cannot audit others: %s", round, previous, exc)
        return {}
    flagged = {}
    for hotkey, result in sorted(results.results.items()):
        if hotkey == self_hotkey or result.state_sha256 == mine.state_sha256:
            continue
        try:
            theirs = read_report(store, result.report)
        except (PayloadError, ArtifactNotFound, StoreError) as exc:
            flagged[hotkey] = f"round {previous}: published state {result.state_sha256[:12]}… with an unreadable report ({exc})"
            continue
        if theirs.base_sha256 != my_report.base_sha256 or theirs.seed != my_report.seed:
            log.info("round %d: %s judged from another base or seed; its state is not compared", previous, hotkey)
            continue
        flagged[hotkey] = (
            f"round {previous}: published state {result.state_sha256[:12]}… (stake {results.stake[hotkey]:g}) from the same base "
            f"{my_report.base_sha256[:12]}… and seed, where this validator computed {mine.state_sha256[:12]}…"
        )
        log.warning("round %d: validator %s disagrees: %s", round, hotkey, flagged[hotkey])
    return flagged


def eval_batches(chain: Chain, job: JobSpec, round: int, heldout: Packed) -> tuple[list[Batch], list[Batch]]:
    """(scoring batches, merge batches) drawn with the seed block's hash: disjoint held-out rows."""
    seed = chain.block_hash(job.schedule.seed_block(round))
    score_rows, merge_rows = eval_samples(heldout.input_ids.shape[0], seed, job.score_rows, job.merge_rows)
    return (
        rows_to_batches(heldout.input_ids, heldout.labels, score_rows, job.eval_batch_rows),
        rows_to_batches(heldout.input_ids, heldout.labels, merge_rows, job.eval_batch_rows),
    )


def control_rows(chain: Chain, job: JobSpec, round: int, train: Packed, hotkeys) -> Batch | None:
    """The shard evidence's control rows: up to `evidence_rows` train rows in none of the shards of `hotkeys` (every
    miner that submitted this round), drawn with the seed block's hash; None when there are none.

    Train rows, not held-out ones: a train row is as likely as a miner's own shard rows to have been trained in
    earlier rounds, so an update that replays earlier rounds' training (a free rider's) fits both alike, where
    held-out rows, never trained, had made its own rows look like its work."""
    total = train.input_ids.shape[0]
    assigned = {i for h in hotkeys for i in miner_shard(total, job.job_id, round, h, job.shard_rows)}
    rows = control_sample(total, chain.block_hash(job.schedule.seed_block(round)), assigned, job.evidence_rows)
    index = torch.as_tensor(rows, dtype=torch.long)
    return (train.input_ids[index], train.labels[index]) if rows else None


def read_submissions(chain: Chain, job: JobSpec, round: int, *, exclude: set[str] = frozenset()) -> dict[str, Revealed | Verdict]:
    """Every hotkey that committed or revealed for `round`, checked (`check_reveal`) against the deadlines.

    The commitment counts as of the commit deadline and the reveal as of the reveal deadline; a
    commitment that landed after its deadline is still read, so that it is refused as LATE rather
    than ignored. Hotkeys whose payloads are for other rounds (or are not submissions) are not listed.
    """
    schedule = job.schedule
    committed = chain.commitments(at_block=schedule.commit_deadline(round))
    latest = chain.commitments(at_block=schedule.reveal_deadline(round))
    out = {}
    for hotkey in sorted((set(committed) | set(latest)) - set(exclude)):
        commit = _for_round(committed.get(hotkey), decode_commitment, CommitPayload, round)
        commit = commit or _for_round(latest.get(hotkey), decode_commitment, CommitPayload, round)
        reveal = _for_round(latest.get(hotkey), decode_reveal, RevealPayload, round)
        if commit is None and reveal is not None:  # a late commitment, hidden by the reveal that followed it
            commit = _for_round(chain.commitment(hotkey, at_block=reveal[1] - 1), decode_commitment, CommitPayload, round)
        if reveal is None and commit is not None:  # a reveal after the deadline is named as late, not as missing
            reveal = _for_round(chain.commitment(hotkey), decode_reveal, RevealPayload, round)
        if commit is not None or reveal is not None:
            out[hotkey] = check_reveal(hotkey, round, schedule, commit=commit, reveal=reveal)
    return out


def fetch_submission(
    store: Store, rev: Revealed, *, job: JobSpec, round: int, layout, norm_bound: float, max_bytes: int
) -> Submission | Verdict:
    """The revealed delta, downloaded and checked; a Verdict naming the problem if it fails any check."""
    hotkey = rev.hotkey
    try:
        size = store.size(rev.digest)
        if size > max_bytes:
            return Verdict(hotkey, Reject.TOO_LARGE, f"revealed object is {size:,} bytes; the assigned delta is at most {max_bytes:,}")
        data = store.get(rev.digest)
    except ArtifactNotFound:
        return Verdict(hotkey, Reject.NO_REVEAL, f"revealed digest {rev.digest[:16]}… is not in the store")
    except StoreError as exc:
        return Verdict(hotkey, Reject.MALFORMED, f"revealed object {rev.digest[:16]}… is unreadable: {exc}")
    try:
        envelope, tensors = unpack(data, limits=Limits(max_total_bytes=max_bytes), expect_hotkey=hotkey, expect_job=job.job_id,
                                   expect_round=round, expect_kind="delta")
    except PayloadError as exc:
        return Verdict(hotkey, _payload_reject(str(exc)), str(exc))
    refused = check_delta(tensors, layout, norm_bound=norm_bound, hotkey=hotkey)
    if refused is not None:
        return refused
    return Submission(hotkey=hotkey, commit_block=rev.commit_block, commitment=rev.commitment, digest=rev.digest, tensors=tensors,
                      content_sha256=envelope.payload_sha256)


def _payload_reject(message: str) -> Reject:
    if "signature does not verify" in message or "signed by hotkey" in message:
        return Reject.BAD_SIGNATURE
    if "not safetensors" in message or "not a safetensors payload" in message:  # a pickle, zip or garbage, whatever its length field claims
        return Reject.MALFORMED
    if "over the limit" in message:
        return Reject.TOO_LARGE
    if "tensors and slots disagree" in message:  # a key outside the routed experts, or a slot the header hides
        return Reject.WRONG_KEYS
    return Reject.MALFORMED


def _for_round(commitment, decode, kind: type, round: int) -> tuple[bytes, int] | None:
    """(data, block) of a commitment that decodes as `kind` for `round`, else None."""
    if commitment is None:
        return None
    payload = decode(commitment.data)
    return (commitment.data, commitment.block) if isinstance(payload, kind) and payload.round == round else None
