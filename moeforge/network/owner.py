"""The owner: turns a job request into a published job, then records how the job went.

DESIGN.md "The network", step 1, and "The library". Top to bottom (`run_owner`):

1. `Owner.publish`: load the base model, split the job's records with the secret salt, profile
   the train split and select the experts (the ESFT core), take the initial expert state, put the
   train rows and the initial state in the store (never the held-out rows), size the round
   schedule from the chain's head, and publish the `JobSpec` (store + owner commitment);
2. wait for the last round to end;
3. `Owner.finish`: read every round's validator results from the chain, keep the state the most
   stake backed and the report of its best-staked backer, evaluate the held-out loss before and
   after, and write the `JobRecord` to the store and to `<run>/result.json`.

An owner restarted with the same run folder re-uses the job it already published. It writes
`job.json` and `job.digest` before the job's commitment goes on chain, so a kill between the two
never makes it publish a second, different job: on restart, a job the chain holds is resumed, and
one that never landed (nobody saw it) is published again, rescheduled from the current block,
without profiling again. The record is written last, atomically; an owner killed while writing it
writes it again.
"""

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from moeforge.atomic import write_text
from moeforge.data.fingerprint import fingerprint_records
from moeforge.data.records import Record
from moeforge.errors import ChainError, ConfigError
from moeforge.eval.domain import rows_loss
from moeforge.eval.general import general_perplexity
from moeforge.library.entry import check_license
from moeforge.model.device import resolve_device
from moeforge.model.fingerprint import model_fingerprint
from moeforge.model.slices import apply_slice, extract_slice
from moeforge.network.history import RESULT_FILE, JobRecord, contribution_shares, round_entry
from moeforge.network.job import JOB_ID, JobSpec, SplitSpec, WarmStartSpec, publish_job, read_job
from moeforge.network.jobdata import encode_train_rows, heldout_check, heldout_rows, load_base, pack_rows, split_job
from moeforge.network.persist import read_model, write_model
from moeforge.network.role import RoleContext
from moeforge.network.schedule import RoundSchedule
from moeforge.network.state import StateRef, backed_report, base_state, fetch_state, pack_state, round_results
from moeforge.profile.selection import ExpertConfig, SelectConfig, coverage_selection, select_experts
from moeforge.profile.stats import ProfileConfig, default_seq_len, profile_records
from moeforge.store.protocol import sha256_hex
from moeforge.train.config import TrainConfig
from moeforge.versions import software_versions

if TYPE_CHECKING:
    from moeforge.library.open import Library

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
DIGEST_FILE = "job.digest"
ENTRY_FILE = "entry.id"  # the library entry the job's final state was deposited as


class JobRequest(BaseModel):
    """What the owner asks for; the defaults run the testbed's maths job on a local network."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = 1
    job_id: str = Field(pattern=JOB_ID)
    base_model: str  # checkpoint folder
    domain: str  # a vendored corpus name or the data file's name, for the record
    validation: float = Field(0.05, ge=0, lt=1)
    heldout: float = Field(0.10, gt=0, lt=1)
    seq_len: int | None = Field(None, ge=2)  # None: the model's context, capped at 256
    select: SelectConfig = SelectConfig()  # ESFT-Token, p = 0.2
    subset_coverage: float = Field(0.9, gt=0, le=1)  # routing mass a subset-mode miner's experts hold
    profile_tokens: int = Field(32_768, ge=1)
    rounds: int = Field(3, ge=1)
    block_seconds: float = Field(1.0, gt=0)  # the chain's block time the schedule is sized for
    start_delay_blocks: int = Field(10, ge=1)  # blocks between publishing and round 0, for roles to start
    train_blocks: int = Field(60, ge=1)  # 3 miners × 16 steps of the default testbed share 2 cores in ~25 s; room for a busy machine
    commit_blocks: int = Field(3, ge=1)
    reveal_blocks: int = Field(3, ge=1)
    score_blocks: int = Field(30, ge=1)  # 2 validators score 3 deltas of the default testbed and merge in ~12 s; room for a busy machine
    inner_steps: int = Field(16, ge=1)  # H
    shard_passes: int = Field(1, ge=1, le=8)  # passes over a miner's shard per round (JobSpec.shard_rows)
    train: TrainConfig = TrainConfig(lr=2e-3, batch_size=8, warmup_steps=2, weight_decay=0.0, checkpoint_every=0)
    norm_bound: float = Field(1.0, gt=0)  # × the current experts' global L2 norm
    significance: float = Field(0.05, gt=0, lt=1)
    evidence_rows: int = Field(64, ge=0)
    evidence_significance: float = Field(0.1, gt=0, le=1)
    general_rows: int = Field(32, ge=0)
    general_mix: float = Field(0.0, ge=0, lt=1)
    general_budget: float = Field(0.02, ge=0)
    backtrack: int = Field(4, ge=0)
    outer_lr: float = Field(1.0, gt=0, le=4)
    outer_momentum: float = Field(0.0, ge=0, lt=1)
    top_k: int = Field(4, ge=1)  # deltas merged per round and part
    parts: int = Field(1, ge=1)  # the selected experts split between miners: each trains one part per round (JobSpec.parts)
    merge_margin: float = Field(0.0, ge=0)
    score_rows: int = Field(32, ge=1)
    merge_rows: int = Field(32, ge=1)
    eval_batch_rows: int = Field(8, ge=1)
    report_rows: int = Field(64, ge=1)  # held-out rows for the record's before/after loss (at most all of them)
    # the expert library (DESIGN.md "The library"), when the owner has one
    warm_start: str = Field("auto", pattern=r"^(auto|none|[0-9a-f]{6,64}(,[0-9a-f]{6,64})*)$")  # auto: the best match above
    # warm_threshold that lowers the train split's loss; none: the base's experts; else entry ids (prefixes), best first
    warm_threshold: float = Field(0.3, ge=-1, le=1)  # routing similarity (library/match.py) auto needs
    deposit: bool = True  # put the final state in the library when the job ends (if any round adopted an update)
    license: str = "Apache-2.0"  # SPDX id of the deposited entry

    @field_validator("license")
    @classmethod
    def _license(cls, value: str) -> str:
        return check_license(value)


class Owner:
    """The job's owner hotkey: publishes the job and writes its record."""

    def __init__(self, ctx: RoleContext, *, request: JobRequest, records: list[Record], salt: str,
                 selection: ExpertConfig | None = None, library: "Library | None" = None):
        """`selection`: the experts to train (an `moeforge select` output); None profiles the train split and selects.
        `library`: where the job is matched for a warm start and its final state deposited; None: neither."""
        self.chain, self.store, self.keypair, self.request = ctx.chain, ctx.store, ctx.keypair, request
        self.library = library
        self.device = resolve_device(ctx.device)  # where the owner's profiling and held-out losses run
        self.records, self.salt, self.selection = records, salt, selection
        self.hotkey = ctx.hotkey
        self.run_dir = Path(ctx.run_dir) if ctx.run_dir is not None else None
        self.observer = ctx.observer("owner")
        self.job: JobSpec | None = None
        self.job_digest: str | None = None

    def publish(self) -> tuple[str, JobSpec]:
        """Publish the job (or re-use the one this run folder already published); (digest, spec)."""
        resumed = self._published_before()
        if resumed is not None:
            self.job_digest, self.job = resumed
            return resumed
        timings: dict[str, float] = {}
        req = self.request
        with self.observer.phase("prepare", timings):
            model, tokenizer = load_base(req.base_model, device=self.device)
            fingerprint = model_fingerprint(model)
            seq_len = req.seq_len or default_seq_len(model)
            splits = split_job(self.records, self.salt, validation=req.validation, heldout=req.heldout)
            train_rows, held_rows = pack_rows(splits.train, tokenizer, seq_len), pack_rows(splits.heldout, tokenizer, seq_len)
        with self.observer.phase("select", timings):
            profile = None  # the train split's routing: what ESFT selects from and what the library indexes
            if self.selection is None or self.library is not None:
                profile = profile_records(model, tokenizer, splits.train, ProfileConfig(
                    tokens=req.profile_tokens, seq_len=seq_len, saliency=False), base_fingerprint=fingerprint)
            if self.selection is not None:  # the user's own: subset miners then hold exactly these experts
                selection = coverage = self._checked_selection(model, fingerprint)
            else:
                selection, coverage = select_experts(profile, req.select), coverage_selection(profile, req.subset_coverage)
        with self.observer.phase("warm_start", timings):
            warm = self._warm_start(model, tokenizer, splits.train, fingerprint, seq_len, profile, selection)
        with self.observer.phase("upload", timings):
            initial = extract_slice(model, selection.slots(), fingerprint)  # the base's experts, or the warm start's
            profile_digest = self.store.put(profile.model_dump_json().encode("utf-8")) if profile is not None else None
            state_bytes, state_sha256 = pack_state(initial, keypair=self.keypair, job_id=req.job_id, round=0)
            state_digest = self.store.put(state_bytes)
            train_digest = self.store.put(encode_train_rows(train_rows))
        head = self.chain.block()
        spec = _spec(
            req, owner=self.hotkey, created_block=head, base_fingerprint=fingerprint, model_type=model.config.model_type,
            seq_len=seq_len, data_fingerprint=fingerprint_records(self.records),
            heldout_check=heldout_check(self.salt, splits.heldout), heldout_rows=int(held_rows.input_ids.shape[0]),
            train_data=train_digest, train_rows=int(train_rows.input_ids.shape[0]),
            experts=dict(selection.experts), subset_experts=dict(coverage.experts), initial_state=state_digest,
            initial_state_sha256=state_sha256, warm_start=warm, profile=profile_digest,
            schedule=RoundSchedule(start_block=head + req.start_delay_blocks, train_blocks=req.train_blocks,
                                   commit_blocks=req.commit_blocks, reveal_blocks=req.reveal_blocks, score_blocks=req.score_blocks),
        )
        digest, block = self._publish(spec)
        self.observer.event(
            "published", f"job {spec.job_id}: {len(spec.slots)} experts of {selection.num_experts * len(selection.experts)} "
            + ("given" if self.selection is not None else "selected") + ", "
            f"{spec.train_rows} train rows in the store, {spec.heldout_rows} held-out rows kept back; round 0 starts at block "
            f"{spec.schedule.start_block}, the last round ends at block {spec.schedule.round_end(spec.last_round)}",
            job=spec.job_id, digest=digest, block=block, experts=len(spec.slots), train_rows=spec.train_rows,
            heldout_rows=spec.heldout_rows, start_block=spec.schedule.start_block,
            end_block=spec.schedule.round_end(spec.last_round), timings=timings,
        )
        return digest, spec

    def _warm_start(self, model, tokenizer, train_records, fingerprint: str, seq_len: int, profile, selection) -> tuple[WarmStartSpec, ...]:
        """Write the warm start's weights into `model` (request.warm_start; library/warm.py); the lineage it makes."""
        req = self.request
        if self.library is None and req.warm_start not in ("auto", "none"):
            raise ConfigError(f"job {req.job_id}: warm_start names library entries ({req.warm_start}) but the owner has no "
                              "expert library: drop --no-library, or pass --catalog/--library-store.")
        if self.library is None or req.warm_start == "none":
            return ()
        if req.warm_start == "auto":
            from moeforge.library.match import chosen, match_records

            slots = {(s.layer, s.expert) for s in selection.slots()}
            ranking = match_records(self.library, model, tokenizer, train_records, fingerprint, seq_len=seq_len,
                                    selected=slots, query=profile)
            picked = chosen(ranking, req.warm_threshold)
            for c in ranking:
                self.observer.event("match", f"library entry {c.entry[:12]}… ({c.domain}): {c.why()}", entry=c.entry,
                                    domain=c.domain, similarity=c.similarity, loss_gain=c.loss_gain, rank=c.rank)
            entries = [c.entry for c in picked[:1]]
            if not entries:
                best = f"; the best, {ranking[0].domain} {ranking[0].entry[:12]}…, has {ranking[0].why()}" if ranking else ""
                self.observer.event("cold_start", f"no library entry matches above similarity {req.warm_threshold:g} with a "
                                    f"loss gain on the train split{best}: the job starts from the base's experts")
                return ()
        else:
            entries = req.warm_start.split(",")
        from moeforge.library.warm import warm_start

        sources = warm_start(model, self.library, entries, selection.slots(), fingerprint)
        for src in sources:
            self.observer.event("warm_start", f"{src.slots} of {selection.count} selected experts start from library entry "
                                f"{src.entry[:12]}…", entry=src.entry, slots=src.slots)
        return tuple(WarmStartSpec(entry=src.entry, slots=src.slots) for src in sources)

    def _checked_selection(self, model, fingerprint: str) -> ExpertConfig:
        """The given selection, if it was made on this base model and fits it; ConfigError saying what does not."""
        selection = self.selection
        if selection.base_fingerprint and selection.base_fingerprint != fingerprint:
            raise ConfigError(f"the expert selection was made on base model {selection.base_fingerprint[:16]}…, but "
                              f"{self.request.base_model} is {fingerprint[:16]}…: select on the job's base model.")
        selection.check_against(model)
        return selection

    def finish(self) -> JobRecord:
        """The job's record, once the chain is past the last round; also put in the store and written to the run folder."""
        job = self._job()
        timings: dict[str, float] = {}
        written = read_model(self.run_dir / RESULT_FILE, JobRecord) if self.run_dir is not None else None
        if written is not None and written.job_digest == self.job_digest:  # killed after writing it: the same record
            self._deposit(job, written)
            self.observer.close()
            return written
        with self.observer.phase("history", timings):
            entries, base_sha256 = [], job.initial_state_sha256
            for r in range(job.rounds):
                results = round_results(self.chain, job, r)
                published = {h: p.state_sha256 for h, p in results.results.items()}
                won = backed_report(self.store, results)
                if won is None:
                    entries.append(round_entry(r, base_sha256, published, {}, None, None))
                    continue
                sha256, backers, report, report_digest = won
                entries.append(round_entry(r, base_sha256, published, backers, report, report_digest))
                base_sha256 = sha256
            final = base_state(self.chain, self.store, job, job.rounds)
        with self.observer.phase("evaluate", timings):
            before, after, tokens, general = self._heldout_losses(job, final)
        record = JobRecord(
            job_id=job.job_id, job_digest=self.job_digest, owner=self.hotkey, domain=job.domain, base_model=job.base_model,
            base_fingerprint=job.base_fingerprint, slots=[(s.layer, s.expert) for s in job.slots],
            final_state_sha256=final.sha256, final_state_digest=final.digest, rounds=entries,
            contributions=contribution_shares(entries), heldout_loss_before=before, heldout_loss_after=after,
            heldout_tokens=tokens, general_ppl_before=general[0], general_ppl_after=general[1],
            finished_block=self.chain.block(), versions=software_versions(),
        )
        record_digest = self.store.put(record.model_dump_json().encode("utf-8"))
        self.observer.reached("recorded")
        if self.run_dir is not None:
            write_model(self.run_dir / RESULT_FILE, record)
        self.observer.metric("moeforge_owner_heldout_loss").labels(when="before").set(before)
        self.observer.metric("moeforge_owner_heldout_loss").labels(when="after").set(after)
        self.observer.metric("moeforge_owner_rounds_recorded").set(len(entries))
        self.observer.event(
            "finished", f"job {job.job_id}: {record.accepted_rounds}/{job.rounds} rounds adopted an update, held-out loss "
            f"{before:.4f} → {after:.4f}; record {record_digest[:12]}…",
            record=record_digest, before=before, after=after, accepted_rounds=record.accepted_rounds, timings=timings,
        )
        with self.observer.phase("deposit", timings):
            self._deposit(job, record)
        self.observer.close()
        return record

    def _deposit(self, job: JobSpec, record: JobRecord) -> None:
        """Put the job's final state in the library (idempotent: the entry id is a digest of its content)."""
        if self.library is None or not self.request.deposit:
            return
        if record.accepted_rounds == 0:
            self.observer.event("not_deposited", f"job {job.job_id}: no round adopted an update, so there is nothing new to "
                                "put in the library")
            return
        from moeforge.library.deposit import deposit, job_fields

        model, _ = load_base(job.base_model, job.base_fingerprint, self.device)
        final = StateRef(sha256=record.final_state_sha256, digest=record.final_state_digest, round=len(record.rounds) - 1)
        experts = fetch_state(self.store, final, job=job, reference=extract_slice(model, job.slots, job.base_fingerprint))
        profile = self.store.get(job.profile) if job.profile is not None else None
        entry, new = deposit(self.library, model, job.base_fingerprint, experts, profile_json=profile,
                             base_model=Path(job.base_model).name,
                             **job_fields(record, job, license=self.request.license,
                                          general_ppl=(record.general_ppl_before, record.general_ppl_after)))
        if self.run_dir is not None:
            write_text(self.run_dir / ENTRY_FILE, entry + "\n")
        self.observer.event("deposited", f"job {job.job_id}: {'deposited' if new else 'already in'} the library as entry "
                            f"{entry[:12]}… ({len(job.slots)} experts, {job.domain})", entry=entry, new=new)

    def _heldout_losses(self, job: JobSpec, final) -> tuple[float, float, int, tuple[float, float]]:
        """Held-out loss of the base's experts and of the final state on the first report_rows held-out rows (tokens
        scored), and WikiText-2 test perplexity of both on report_rows rows."""
        model, tokenizer = load_base(job.base_model, job.base_fingerprint, self.device)
        rows = heldout_rows(job, self.records, self.salt, tokenizer)
        n = min(self.request.report_rows, rows.input_ids.shape[0])
        ids, labels = rows.input_ids[:n], rows.labels[:n]
        general_tokens = self.request.report_rows * job.seq_len

        def general() -> float:
            return general_perplexity(model, tokenizer, seq_len=job.seq_len, max_tokens=general_tokens,
                                      batch_size=job.eval_batch_rows).perplexity

        before, general_before = rows_loss(model, ids, labels, batch_size=job.eval_batch_rows), general()
        reference = extract_slice(model, job.slots, job.base_fingerprint)
        apply_slice(model, fetch_state(self.store, final, job=job, reference=reference))
        after, general_after = rows_loss(model, ids, labels, batch_size=job.eval_batch_rows), general()
        return before.loss, after.loss, before.tokens, (general_before, general_after)

    def _job(self) -> JobSpec:
        if self.job is None:
            raise ConfigError("the owner has not published its job yet; call publish() first.")
        return self.job

    def _publish(self, spec: JobSpec) -> tuple[str, int]:
        """Keep the spec and its digest in the run folder, then publish it; (digest, block)."""
        digest = sha256_hex(spec.model_dump_json().encode("utf-8"))  # the bytes publish_job puts in the store
        if self.run_dir is not None:
            write_model(self.run_dir / JOB_FILE, spec)
            write_text(self.run_dir / DIGEST_FILE, digest + "\n")
        self.observer.reached("publishing")
        published, block = publish_job(spec, store=self.store, chain=self.chain, keypair=self.keypair)
        assert published == digest, "publish_job stores the spec as its JSON"
        self.job, self.job_digest = spec, digest
        return digest, block

    def _published_before(self) -> tuple[str, JobSpec] | None:
        """(digest, spec) of the job this run folder published (module docstring); None to publish afresh."""
        if self.run_dir is None:
            return None
        spec = read_model(self.run_dir / JOB_FILE, JobSpec)
        if spec is None or spec.job_id != self.request.job_id or spec.owner != self.hotkey:
            return None
        digest_file = self.run_dir / DIGEST_FILE
        digest = digest_file.read_text().strip() if digest_file.is_file() else None
        on_chain = read_job(self.chain, self.store, self.hotkey)
        if on_chain is not None and on_chain[0] == digest:
            self.observer.event("resumed", f"job {spec.job_id} already published as {digest[:12]}…", digest=digest)
            return on_chain
        if not (self.store.exists(spec.initial_state) and self.store.exists(spec.train_data)):
            return None
        head = self.chain.block()
        schedule = spec.schedule.model_copy(update={"start_block": head + self.request.start_delay_blocks})
        digest, block = self._publish(spec.model_copy(update={"created_block": head, "schedule": schedule}))
        self.observer.event("republished", f"job {spec.job_id} was prepared but never landed on chain; published it as "
                            f"{digest[:12]}…, round 0 from block {schedule.start_block}", digest=digest, block=block,
                            start_block=schedule.start_block)
        return digest, self.job


def run_owner(owner: Owner, *, poll_s: float = 0.25, on_block: Callable[[JobSpec, int], None] | None = None) -> JobRecord:
    """Publish the job, wait for its last round to end, and write its record; `on_block(job, head)` on each poll."""
    _, job = owner.publish()
    end = job.schedule.round_end(job.last_round)
    timeout_s = job.wait_s(end - owner.chain.block())
    deadline = time.monotonic() + timeout_s
    head = owner.chain.block()
    while head < end:
        if head >= job.schedule.start_block:
            owner.observer.round = job.schedule.phase_at(head)[0]
            owner.observer.reached("mid_job")
        if on_block is not None:
            on_block(job, head)
        if time.monotonic() > deadline:
            raise ChainError(f"job {job.job_id}: the chain is at block {head} after {timeout_s:.0f} s of waiting, and the last "
                             f"round ends at block {end}. Is the chain advancing at about {job.block_seconds:g} s per block?")
        time.sleep(poll_s)
        head = owner.chain.idle(owner.hotkey, end)  # nothing to do before the end: a lock-step chain may move on
    if on_block is not None:
        on_block(job, head)
    return owner.finish()


def _spec(req: JobRequest, **fields) -> JobSpec:
    """The JobSpec for this request, or one ConfigError naming every option that does not fit the data.

    Held-out rows for scoring and merging that the request leaves at their defaults are sized to the data: on
    a small file they share what the held-out split holds, half each, instead of failing."""
    score_rows, merge_rows = req.score_rows, req.merge_rows
    heldout = fields.get("heldout_rows")
    unset = not {"score_rows", "merge_rows"} & req.model_fields_set
    if unset and heldout is not None and 2 <= heldout < score_rows + merge_rows:
        score_rows, merge_rows = heldout // 2, heldout - heldout // 2
    try:
        return JobSpec(
            job_id=req.job_id, base_model=str(Path(req.base_model).resolve()), domain=req.domain,
            split=SplitSpec(validation=req.validation, heldout=req.heldout), rounds=req.rounds, block_seconds=req.block_seconds,
            inner_steps=req.inner_steps, shard_passes=req.shard_passes, train=req.train, norm_bound=req.norm_bound, significance=req.significance,
            evidence_rows=req.evidence_rows, evidence_significance=req.evidence_significance, general_rows=req.general_rows, general_mix=req.general_mix,
            general_budget=req.general_budget, backtrack=req.backtrack, outer_lr=req.outer_lr, outer_momentum=req.outer_momentum,
            top_k=req.top_k, parts=req.parts, merge_margin=req.merge_margin, score_rows=score_rows, merge_rows=merge_rows,
            eval_batch_rows=req.eval_batch_rows, **fields,
        )
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(
            f"job {req.job_id}: the request does not fit its data: {problems}. Lower score_rows/merge_rows or "
            "inner_steps (--inner-steps) or train.batch_size (keys of the --config JSON), raise heldout, or give the job more data."
        ) from None
