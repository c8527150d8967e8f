"""The validator: after each round's reveal deadline, judge every submission, publish the result, set weights.

DESIGN.md "The network", steps 5–7. One round, top to bottom (`Validator.score_round`):

1. `_hold`: make the model hold the round's base state (the most validator stake behind it),
   swapping the expert slices in place; the model is loaded once, never per submission;
2. `judge_round` (validator_round.py): read commitments and reveals as of their deadlines,
   seed with the seed block's hash, fetch and check each delta, score Proof-of-Loss on the
   held-out sample, merge the top-k and keep the merge only if it beats the base on a second sample;
3. `_publish`: the resulting state and a round report to the store, their digests on chain;
4. `_rate`: scores → smoothed ratings → weights on chain;
5. `_persist`: `state.json` in the run folder, written atomically, so a validator killed at any
   point resumes from the last round it completed.

A validator killed mid-round re-judges the round after its restart: the same chain reads as of
the same deadlines, the same seed block, the same held-out rows and the same base state give the
same resulting state. If its result for the round already landed before the kill, it does not
publish a second one: it takes the report it published and goes on to weights and `state.json`.
"""

import logging
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from moeforge.atomic import write_text
from moeforge.chain.protocol import require_permit, wait_for_block
from moeforge.data.records import Record
from moeforge.errors import ConfigError
from moeforge.eval.general import general_reference_rows
from moeforge.model.slices import ExpertSlice, apply_slice, extract_slice
from moeforge.network.commitment import ResultPayload, decode_result, encode_result
from moeforge.network.history import RoundReport
from moeforge.network.job import JobSpec
from moeforge.network.jobdata import decode_train_rows, heldout_rows, load_base
from moeforge.network.merge import GeneralGuard
from moeforge.network.persist import read_model, write_model
from moeforge.network.role import RoleContext
from moeforge.network.rating import RatingState, chain_weights, forget, round_scores, update_ratings
from moeforge.network.scoring import batch_losses
from moeforge.network.shards import rows_to_batches
from moeforge.network.state import StateRef, base_state, fetch_outer_state, pack_state, read_report
from moeforge.network.validator_round import RoundJudgement, judge_round

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
ROUNDS_DIR = "rounds"


class ValidatorState(BaseModel):
    """What a validator must remember across a restart (the chain and the store hold the rest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = 1
    job_id: str
    job_digest: str
    hotkey: str
    last_round: int | None = None  # the last round completed (published, missed or failed)
    ratings: RatingState = Field(default_factory=RatingState)
    accepted_digests: dict[str, str] = Field(default_factory=dict)  # digest → hotkey of deltas accepted in earlier rounds
    reports: dict[int, str] = Field(default_factory=dict)  # round → store address of this validator's report
    missed: dict[int, str] = Field(default_factory=dict)  # round → why it was not judged


class Validator:
    """One validator hotkey judging one job; `run_dir` holds its resumable state."""

    def __init__(self, ctx: RoleContext, *, job: JobSpec, job_digest: str, records: list[Record], salt: str):
        self.chain, self.store, self.keypair, self.job, self.job_digest = ctx.chain, ctx.store, ctx.keypair, job, job_digest
        self.hotkey = ctx.hotkey
        require_permit(self.chain.metagraph(), self.hotkey)
        self.run_dir = Path(ctx.run_dir) if ctx.run_dir is not None else None
        self.state = self._resume()
        self.observer = ctx.observer("validator")
        self.model, tokenizer = load_base(job.base_model, job.base_fingerprint, ctx.device)
        self.heldout = heldout_rows(job, records, salt, tokenizer)
        self.current: ExpertSlice = extract_slice(self.model, job.slots, job.base_fingerprint)
        self.momentum: ExpertSlice | None = None  # the outer optimizer's, as the held state carries it
        self.current_ref: StateRef | None = None  # None until a state fetched from the store is held
        self.guard = self._general_guard(tokenizer)  # while the model still holds the base model's experts
        self.train = decode_train_rows(self.store.get(job.train_data), seq_len=job.seq_len, rows=job.train_rows) \
            if job.evidence_rows else None
        if self.state.last_round is not None:
            self.observer.event("resumed", f"resuming job {job.job_id} after round {self.state.last_round}",
                                last_round=self.state.last_round)

    @property
    def next_round(self) -> int:
        return 0 if self.state.last_round is None else self.state.last_round + 1

    def score_round(self, r: int) -> RoundReport:
        """Judge round r and publish the outcome; needs the chain at or past `seed_block(r)`."""
        timings: dict[str, float] = {}
        with self.observer.phase("base_state", timings):
            ref = self._hold(r)
        judgement = judge_round(
            self.model, self.current, momentum=self.momentum, chain=self.chain, store=self.store, job=self.job, round=r,
            heldout=self.heldout, train=self.train, guard=self.guard, earlier_digests=self.state.accepted_digests, self_hotkey=self.hotkey, observer=self.observer, timings=timings,
        )
        with self.observer.phase("publish", timings):
            report, report_digest = self._publish(r, ref, judgement, timings)
        with self.observer.phase("weights", timings):
            self._rate(r, judgement)
        self._persist(r, judgement, report, report_digest)
        self._observe(r, judgement, report, timings)
        return report

    def skip(self, r: int, reason: str) -> None:
        """Record that round r was not judged (and why), so a restart does not retry it."""
        self.observer.event("missed", f"round {r}: not judged: {reason}", round=r, reason=reason)
        self._save(self.state.model_copy(update={"last_round": r, "missed": {**self.state.missed, r: reason}}))

    def _general_guard(self, tokenizer) -> GeneralGuard | None:
        """The job's drift budget on its general reference set, measured against the base model (the model as loaded)."""
        job = self.job
        if not job.general_rows:
            return None
        input_ids, labels = general_reference_rows(tokenizer, seq_len=job.seq_len, rows=job.general_rows)
        batches = rows_to_batches(input_ids, labels, range(input_ids.shape[0]), job.eval_batch_rows)
        base = batch_losses(self.model, batches, batch_size=job.eval_batch_rows).mean
        limit = base + math.log1p(job.general_budget)
        log.info("general guard: %d WikiText-2 validation rows, base loss %.4f (ppl %.2f), limit %.4f (ppl %.2f, +%g%%)",
                 input_ids.shape[0], base, math.exp(base), limit, math.exp(limit), 100 * job.general_budget)
        return GeneralGuard(batches, limit, job.backtrack, base)

    def _hold(self, r: int) -> StateRef:
        """Make the model hold round r's base state (and this validator its outer momentum), fetching it only when it changed."""
        ref = base_state(self.chain, self.store, self.job, r)
        if self.current_ref is None or ref.sha256 != self.current_ref.sha256:
            piece, momentum = fetch_outer_state(self.store, ref, job=self.job, reference=self.current)
            apply_slice(self.model, piece)  # writes the slices in place; the model is never reloaded
            self.current, self.momentum, self.current_ref = piece, momentum, ref
        return ref

    def _publish(self, r: int, ref: StateRef, judgement: RoundJudgement, timings: dict[str, float]) -> tuple[RoundReport, str]:
        data, sha256 = pack_state(judgement.state, keypair=self.keypair, job_id=self.job.job_id, round=r,
                                  momentum=judgement.momentum)
        earlier = self.published(r)
        if earlier is not None and earlier.state_sha256 == sha256:  # published before a restart: do not publish twice
            self.observer.event("republished", f"round {r}: the result {sha256[:12]}… was already on chain before the "
                                "restart; keeping it", round=r, state=sha256, report=earlier.report)
            return read_report(self.store, earlier.report), earlier.report
        if earlier is not None:
            log.warning("round %d: re-judging after a restart gave state %s…, not the %s… published before; publishing "
                        "the new one, which replaces it", r, sha256[:12], earlier.state_sha256[:12])
        state_digest = self.store.put(data)
        decision = judgement.decision
        report = RoundReport(
            job_id=self.job.job_id, round=r, validator=self.hotkey, seed_block=self.job.schedule.seed_block(r),
            seed=self.chain.block_hash(self.job.schedule.seed_block(r)), base_sha256=ref.sha256, state_sha256=sha256,
            state_digest=state_digest, choice=decision.choice if decision else "none",
            best_hotkey=decision.hotkey if decision else None, accepted=judgement.accepted,
            contributions=decision.contributions if decision else {}, copies=judgement.copies, verdicts=judgement.entries,
            replays=judgement.replays, disagreements=judgement.disagreements,
            errors=judgement.errors, score_rows=self.job.score_rows, merge_rows=self.job.merge_rows,
            score_base_loss=judgement.score_base_loss, merge_base_loss=decision.current_loss if decision else None,
            merged_loss=decision.merged_loss if decision else None, single_loss=decision.single_loss if decision else None,
            scale=decision.scale if decision else 1.0, marginal=decision.marginal if decision else {},
            general_base_loss=self.guard.base_loss if self.guard else None,
            current_general_loss=decision.current_general_loss if decision else None,
            adopted_general_loss=decision.general_loss if decision else None,
            timings=timings,
        )
        report_digest = self.store.put(report.model_dump_json().encode("utf-8"))
        block = self.chain.commit(self.keypair, encode_result(sha256, report_digest, r))
        self.observer.reached("after_publish")
        if block > self.job.schedule.round_end(r):
            log.warning("round %d: result landed in block %d, after the round's end %d; it will not count for the next base",
                        r, block, self.job.schedule.round_end(r))
        return report, report_digest

    def published(self, r: int) -> ResultPayload | None:
        """This validator's result for round r on chain, if one landed (before a restart)."""
        latest = self.chain.commitment(self.hotkey)
        payload = decode_result(latest.data) if latest is not None else None
        return payload if isinstance(payload, ResultPayload) and payload.round == r else None

    def _rate(self, r: int, judgement: RoundJudgement) -> None:
        graph = self.chain.metagraph()
        scores = round_scores(judgement.verdicts, judgement.decision.contributions if judgement.decision else {})
        ratings = forget(update_ratings(self.state.ratings, r, scores), set(graph.hotkeys))
        self.state = self.state.model_copy(update={"ratings": ratings})
        weights = chain_weights(ratings, {n.hotkey: n.uid for n in graph.neurons})
        if weights:
            self.chain.set_weights(self.keypair, weights)
            for uid, weight in weights.items():
                self.observer.metric("moeforge_validator_weight").labels(uid=str(uid)).set(weight)

    def _persist(self, r: int, judgement: RoundJudgement, report: RoundReport, report_digest: str) -> None:
        accepted = {judgement.digests[h]: h for h, v in judgement.verdicts.items() if v.accepted and h in judgement.digests}
        if self.run_dir is not None:
            write_text(self.run_dir / ROUNDS_DIR / f"{r}.json", report.model_dump_json(indent=2) + "\n")
        self._save(self.state.model_copy(update={
            "last_round": r,
            "accepted_digests": {**self.state.accepted_digests, **accepted},
            "reports": {**self.state.reports, r: report_digest},
        }))

    def _observe(self, r: int, judgement: RoundJudgement, report: RoundReport, timings: dict[str, float]) -> None:
        obs = self.observer
        obs.metric("moeforge_round").set(r)
        for verdict in judgement.verdicts.values():
            obs.metric("moeforge_validator_verdicts_total").labels(verdict=str(verdict.reject or "accepted")).inc()
        for hotkey, verdict in judgement.verdicts.items():
            obs.metric("moeforge_validator_score").labels(miner=hotkey).set(verdict.score if verdict.accepted and verdict.score else 0.0)
        obs.metric("moeforge_validator_merges_total").labels(choice=report.choice).inc()
        for validator, detail in judgement.disagreements.items():
            obs.metric("moeforge_validator_disagreements_total").labels(validator=validator).inc()
            obs.event("disagreement", f"round {r}: validator {validator} disagrees: {detail}", round=r, validator=validator, detail=detail)
        if report.merge_base_loss is not None:
            obs.metric("moeforge_validator_heldout_loss").labels(state="current").set(report.merge_base_loss)
            obs.metric("moeforge_validator_heldout_loss").labels(state="adopted").set(report.adopted_loss)
        rejected = {e.hotkey: e.reject for e in report.verdicts if e.reject}
        obs.event(
            "scored", f"round {r}: {len(judgement.accepted)}/{len(judgement.verdicts)} accepted, {report.choice}"
            + (f", held-out {report.merge_base_loss:.4f} → {report.adopted_loss:.4f}" if report.merge_base_loss is not None else "")
            + (f", rejected {rejected}" if rejected else ""),
            round=r, choice=report.choice, accepted=judgement.accepted, rejected=rejected, state=report.state_sha256,
            merge_base_loss=report.merge_base_loss, adopted_loss=report.adopted_loss, timings=timings,
        )
        obs.flush_metrics()

    def _resume(self) -> ValidatorState:
        fresh = ValidatorState(job_id=self.job.job_id, job_digest=self.job_digest, hotkey=self.hotkey)
        if self.run_dir is None:
            return fresh
        saved = read_model(self.run_dir / STATE_FILE, ValidatorState)
        if saved is None:
            return fresh
        if saved.job_digest != self.job_digest or saved.hotkey != self.hotkey:
            raise ConfigError(
                f"{self.run_dir / STATE_FILE} belongs to job {saved.job_id} ({saved.job_digest[:12]}…) and hotkey "
                f"{saved.hotkey}, not job {self.job.job_id} ({self.job_digest[:12]}…) and {self.hotkey}. "
                "Give this validator its own --run folder."
            )
        return saved

    def _save(self, state: ValidatorState) -> None:
        self.state = state
        if self.run_dir is not None:
            write_model(self.run_dir / STATE_FILE, state)


def run_validator(validator: Validator, *, poll_s: float = 0.25) -> None:
    """Judge every remaining round of the job, then return; a round already over is recorded as missed."""
    job, chain, schedule = validator.job, validator.chain, validator.job.schedule
    validator.observer.event("started", f"validating job {job.job_id} from round {validator.next_round} of {job.rounds}",
                             job=job.job_id, first_round=validator.next_round)
    for r in range(validator.next_round, job.rounds):
        validator.observer.round = r
        if chain.block() > schedule.round_end(r) and validator.published(r) is None:  # published: finish it below
            validator.skip(r, f"the chain is at block {chain.block()}, past the round's end {schedule.round_end(r)}")
            continue
        seed = schedule.seed_block(r)
        wait_for_block(chain, seed, timeout_s=job.wait_s(seed - chain.block()), poll_s=poll_s, hotkey=validator.hotkey)
        try:
            validator.score_round(r)
        except Exception as exc:  # noqa: BLE001 (a failed round is recorded; the validator goes on to the next)
            validator.observer.failure("round", r, exc)
            validator.skip(r, f"failed: {type(exc).__name__}: {exc}")
    validator.observer.event("finished", f"job {job.job_id}: done", job=job.job_id)
    chain.idle(validator.hotkey, None)  # nothing more to do: a lock-step chain need not wait for this validator
    validator.observer.close()
