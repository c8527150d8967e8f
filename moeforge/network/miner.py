"""The miner: each round, train the job's experts on its own shard and submit the delta by commit-reveal.

DESIGN.md "The network", steps 2–4. One round, top to bottom (`run_miner`):

1. wait for the round to start; `Miner.prepare`: read the round's base state (the one the most
   validator stake backed, `state.base_state`), load the base model, write that state into it,
   reduce the model to the miner's memory mode (`full`, `quantized`, `subset` or `offload`,
   `extract.package`), and train H inner steps on `miner_shard(job, round, hotkey)` with the
   expert-only trainer (with the job's `general_mix`, that share of the shard's rows replaced by
   general text drawn for this miner and round from WikiText-2 validation past the guard's rows)
   → the exact delta, packed and signed (`transport.pack`);
2. `Miner.commit`: `sha256(delta digest ‖ hotkey ‖ round)` on chain, if it lands by the commit deadline;
3. wait for the commit deadline; `Miner.reveal`: upload the delta to the store, post its address.

The model is loaded afresh each round: a quantized or subset model cannot take new expert
weights in place, and loading is cheap next to training. While it loads, the miner holds the
full model for a moment; the reduced model is what it trains with.

Crash safety (issue 6): before committing, the miner writes the signed bytes it commits to
`<run>/pending/<round>.delta` (atomically), so a miner killed and restarted in the same round
commits or reveals those very bytes (a re-trained delta is signed afresh and would not match the
commitment); it never reveals bytes whose digest is not the one committed on chain, and a round
it can no longer finish in time is skipped with a `skipped` event. The upload itself is atomic
in the store, so a kill mid-upload leaves nothing readable.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError

from moeforge.atomic import write_bytes
from moeforge.chain.protocol import Chain, not_registered, wait_for_block
from moeforge.data.formatting import IGNORE_INDEX
from moeforge.data.packing import Packed
from moeforge.errors import ChainError, ConfigError, PayloadError
from moeforge.extract.package import MODES, MinerMode, reduce_for_mode
from moeforge.model.device import resolve_device
from moeforge.model.slices import apply_slice, extract_slice
from moeforge.network.checks import global_norm
from moeforge.network.commitment import (
    CommitPayload,
    RevealPayload,
    commitment,
    decode_commitment,
    decode_reveal,
    encode_commitment,
    encode_reveal,
)
from moeforge.network.job import JobSpec
from moeforge.network.jobdata import check_fingerprint, decode_train_rows, shard
from moeforge.network.role import RoleContext
from moeforge.network.shards import miner_shard
from moeforge.network.state import StateRef, base_state, fetch_state
from moeforge.network.transport import pack, unpack
from moeforge.store.protocol import sha256_hex
from moeforge.train.config import TrainConfig
from moeforge.train.esft import train_experts
from moeforge.train.metrics import StepCallback, TrainResult

log = logging.getLogger(__name__)

PENDING_DIR = "pending"  # <run>/pending/<round>.delta: the bytes committed to, until revealed


@dataclass(frozen=True, eq=False)
class Prepared:
    """A trained, packed delta waiting to be committed and revealed."""

    round: int
    data: bytes  # the signed payload (transport.pack, kind "delta")
    digest: str  # its store address: sha256 of `data`
    base: StateRef | None  # the state it was trained from (None: read back from the run folder after a restart)
    result: TrainResult | None  # None: read back from the run folder after a restart
    delta_norm: float


class Miner:
    """One miner hotkey working on one job."""

    def __init__(self, ctx: RoleContext, *, job: JobSpec, mode: MinerMode = "full", checkpointing: bool = False,
                 optimizer: str | None = None, loss_chunk_tokens: int = 0, prefetch: bool = False,
                 on_step: StepCallback | None = None):
        if mode not in MODES:
            raise ConfigError(f"--mode {mode!r}: a miner runs in one of the memory modes {', '.join(MODES)}.")
        self.chain, self.store, self.keypair, self.job, self.mode = ctx.chain, ctx.store, ctx.keypair, job, mode
        self.hotkey = ctx.hotkey
        self.prefetch = prefetch  # offload mode: guess the next layer's experts while one computes (a second working set)
        # memory choices of this miner's own: activation checkpointing (the same delta), the loss in chunks (the same up to
        # rounding), 8-bit AdamW states (another update, scored like any other); None: the job's optimizer
        choices = {"activation_checkpointing": checkpointing, "loss_chunk_tokens": loss_chunk_tokens,
                   **({"optimizer": optimizer} if optimizer is not None else {})}
        try:
            self.train_config = TrainConfig.model_validate({**job.miner_train_config().model_dump(), **choices})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"--optimizer/--loss-chunk: {problems}.") from None
        if self.chain.metagraph().by_hotkey(self.hotkey) is None:
            raise ChainError(not_registered(self.hotkey, self.chain.metagraph().netuid))
        self.run_dir = Path(ctx.run_dir) if ctx.run_dir is not None else None
        self.observer = ctx.observer("miner")
        self.on_step = on_step
        self.device = resolve_device(ctx.device)  # where the miner trains; a bad --device fails before any work
        self._rows = None  # the job's train rows, fetched once
        self._general = None  # the general text to mix in (job.general_mix), tokenized once

    def prepare(self, r: int) -> Prepared:
        """Train round r's delta from the round's base state; pack and sign it."""
        timings: dict[str, float] = {}
        with self.observer.phase("fetch", timings):
            ref = base_state(self.chain, self.store, self.job, r)
            rows = self._train_rows()
        slots = self.job.assigned_slots(r, self.hotkey)  # the job's part this miner trains this round (all with parts 1)
        with self.observer.phase("load", timings):
            model = self._model_holding(ref, slots)
        indices = miner_shard(rows.input_ids.shape[0], self.job.job_id, r, self.hotkey, self.job.shard_rows)
        data = self._with_general(shard(rows, indices[: self.job.shard_rows - self.job.general_mix_rows]), r)
        with self.observer.phase("train", timings):
            delta, result = train_experts(
                model, slots, data,
                self.train_config,
                base_fingerprint=self.job.base_fingerprint, on_step=self._on_step,
            )
        del model
        data = pack(delta.state_dict(), keypair=self.keypair, job=self.job.job_id, round=r, kind="delta")
        prepared = Prepared(r, data, sha256_hex(data), ref, result, global_norm(delta.state_dict()))
        self.observer.metric("moeforge_round").set(r)
        self.observer.metric("moeforge_miner_train_loss").set(result.final_loss)
        self.observer.metric("moeforge_miner_tokens_per_second").set(result.tokens_per_s)
        self.observer.metric("moeforge_miner_delta_norm").set(prepared.delta_norm)
        self.observer.event(
            "trained", f"round {r}: trained {len(slots)} experts"
            + (f" (part {self.job.part_of(r, self.hotkey)} of {self.job.parts})" if self.job.parts > 1 else "")
            + f" {result.history[-1].step} steps in {self.mode} mode from state "
            f"{ref.sha256[:10]}…, loss {result.history[0].loss:.3f} → {result.final_loss:.3f}, delta norm {prepared.delta_norm:.4g}",
            round=r, mode=self.mode, part=self.job.part_of(r, self.hotkey), experts=len(slots), base=ref.sha256,
            base_round=ref.round, digest=prepared.digest,
            first_loss=result.history[0].loss, final_loss=result.final_loss, delta_norm=prepared.delta_norm,
            tokens=result.tokens, tokens_per_s=result.tokens_per_s, timings=timings,
        )
        return prepared

    def commit(self, prepared: Prepared) -> bool:
        """Commit to the delta if the commitment can still land by the commit deadline; whether it did."""
        r, deadline = prepared.round, self.job.schedule.commit_deadline(prepared.round)
        if self.chain.block() >= deadline:  # a write lands in the block after the head
            self.observer.metric("moeforge_miner_submissions_total").labels(outcome="missed_deadline").inc()
            self.observer.event("missed_deadline", f"round {r}: too late to commit (chain at block {self.chain.block()}, "
                                f"deadline {deadline}); the round is lost", round=r, deadline=deadline)
            return False
        self._keep(prepared)  # the committed bytes are on disk before the commitment is on chain
        block = self.chain.commit(self.keypair, encode_commitment(commitment(prepared.digest, self.hotkey, r), r))
        self.observer.reached("after_commit")
        late = block > deadline  # the head moved on between the check and the write
        self.observer.metric("moeforge_miner_submissions_total").labels(outcome="late_commit" if late else "committed").inc()
        self.observer.event("committed", f"round {r}: committed to {prepared.digest[:12]}… in block {block}"
                            + (f" (after the deadline {deadline}: validators will refuse it as late)" if late else ""),
                            round=r, block=block, digest=prepared.digest, late=late)
        return not late

    def reveal(self, prepared: Prepared) -> int:
        """Upload the delta and post its address; call once the commit deadline has passed. → the block."""
        r = prepared.round
        if self.chain.block() < self.job.schedule.commit_deadline(r):
            raise ChainError(f"round {r}: revealing before the commit deadline (block {self.job.schedule.commit_deadline(r)}) "
                             "would hide the commitment from validators; wait for the deadline first.")
        self.store.put(prepared.data, progress=self._uploading)
        self.observer.reached("after_upload")
        block = self.chain.commit(self.keypair, encode_reveal(prepared.digest, r))
        late = block > self.job.schedule.reveal_deadline(r)
        self.observer.metric("moeforge_miner_submissions_total").labels(outcome="late_reveal" if late else "revealed").inc()
        self.observer.event("revealed", f"round {r}: revealed {prepared.digest[:12]}… ({len(prepared.data):,} bytes) in block {block}"
                            + (" (after the reveal deadline)" if late else ""), round=r, block=block, late=late)
        self.observer.flush_metrics()
        self.forget(r)
        return block

    def _uploading(self, done: int, total: int) -> None:
        """A put's progress: half the delta written (into the store's temp file) is the `mid_upload` fault point."""
        if 2 * done >= total:
            self.observer.reached("mid_upload")

    def pending(self, r: int) -> Prepared | None:
        """The delta this miner kept for round r before committing to it (after a restart), or None."""
        path = self._pending_path(r)
        if path is None or not path.is_file():
            return None
        data = path.read_bytes()
        try:
            _, tensors = unpack(data, expect_hotkey=self.hotkey, expect_job=self.job.job_id, expect_round=r,
                                       expect_kind="delta")
        except PayloadError as exc:  # a disk error or a stray file: train again rather than commit to it
            log.warning("round %d: %s is not this miner's delta (%s); training again", r, path, exc)
            path.unlink(missing_ok=True)
            return None
        prepared = Prepared(r, data, sha256_hex(data), None, None, global_norm(tensors))
        self.observer.event("resumed", f"round {r}: resuming with the delta {prepared.digest[:12]}… kept in {path}",
                            round=r, digest=prepared.digest)
        return prepared

    def kept(self, r: int) -> bool:
        """Whether this miner kept a delta for round r (it had committed, or was about to)."""
        path = self._pending_path(r)
        return path is not None and path.is_file()

    def submitted(self, prepared: Prepared) -> str | None:
        """How far this delta's round got on chain: "revealed", "committed" (to these bytes), or None."""
        r, latest = prepared.round, self.chain.commitment(self.hotkey)
        if latest is None:
            return None
        reveal = decode_reveal(latest.data)
        if isinstance(reveal, RevealPayload) and reveal.round == r:
            return "revealed" if reveal.digest == prepared.digest else "other"
        commit = decode_commitment(latest.data)
        if isinstance(commit, CommitPayload) and commit.round == r:
            return "committed" if commit.commitment == commitment(prepared.digest, self.hotkey, r) else "other"
        return None

    def skip(self, r: int, reason: str) -> None:
        """Give up on round r (too late to finish it, or nothing it can honestly reveal), and say why."""
        self.observer.metric("moeforge_miner_submissions_total").labels(outcome="skipped").inc()
        self.observer.event("skipped", f"round {r}: skipped: {reason}", round=r, reason=reason)
        self.forget(r)

    def _on_step(self, info) -> None:
        if info.step == max(1, self.job.inner_steps // 2):
            self.observer.reached("mid_training")
        if self.on_step is not None:
            self.on_step(info)

    def _pending_path(self, r: int) -> Path | None:
        return None if self.run_dir is None else self.run_dir / PENDING_DIR / f"{r}.delta"

    def _keep(self, prepared: Prepared) -> None:
        path = self._pending_path(prepared.round)
        if path is not None:
            write_bytes(path, prepared.data)

    def forget(self, r: int) -> None:
        """Drop the delta kept for round r (revealed, or given up on)."""
        path = self._pending_path(r)
        if path is not None:
            path.unlink(missing_ok=True)

    def _train_rows(self):
        if self._rows is None:
            data = self.store.get(self.job.train_data)
            self._rows = decode_train_rows(data, seq_len=self.job.seq_len, rows=self.job.train_rows)
        return self._rows

    def _with_general(self, domain: Packed, r: int) -> Packed:
        """The round's domain rows plus `general_mix_rows` rows of general text drawn for this miner and round."""
        n = self.job.general_mix_rows
        if not n:
            return domain
        if self._general is None:
            from transformers import AutoTokenizer

            from moeforge.eval.general import general_mix_rows

            tokenizer = AutoTokenizer.from_pretrained(self.job.base_model)
            self._general = general_mix_rows(tokenizer, seq_len=self.job.seq_len, skip_rows=self.job.general_rows)
        ids, labels = self._general
        index = torch.as_tensor(miner_shard(ids.shape[0], self.job.job_id + "/general", r, self.hotkey, n), dtype=torch.long)
        ids, labels = torch.cat([domain.input_ids, ids[index]]), torch.cat([domain.labels, labels[index]])
        return Packed(input_ids=ids, labels=labels, n_tokens=int(ids.numel()), n_loss_tokens=int((labels != IGNORE_INDEX).sum()))

    def _model_holding(self, ref: StateRef, slots):
        """The base model with the round's state written in, reduced to this miner's memory mode (training `slots`)."""
        from moeforge.model.load import load_model

        model = load_model(self.job.base_model)
        check_fingerprint(model, self.job.base_fingerprint, self.job.base_model)
        reference = extract_slice(model, self.job.slots, self.job.base_fingerprint)
        apply_slice(model, fetch_state(self.store, ref, job=self.job, reference=reference))
        kept = {layer: list(ids) for layer, ids in self.job.subset_experts.items()}
        reduce_for_mode(model, self.mode, slots, kept, prefetch=self.prefetch)
        return model.to(self.device)


def first_round(job: JobSpec, block: int) -> int:
    """The first round whose commitment, sent at `block`, would still land by its commit deadline."""
    if block < job.schedule.start_block:
        return 0
    r, _ = job.schedule.phase_at(block)
    return r if block < job.schedule.commit_deadline(r) else r + 1


def run_miner(miner: Miner, *, poll_s: float = 0.25) -> None:
    """Take part in every remaining round of the job, then return.

    After a restart, a round whose commit deadline has passed is still finished if this miner kept the delta
    it committed to and the reveal can still land in time (module docstring)."""
    job, chain, schedule = miner.job, miner.chain, miner.job.schedule
    head = chain.block()
    start = first_round(job, head)
    if start > 0 and head < schedule.reveal_deadline(start - 1) and miner.kept(start - 1):
        start -= 1  # killed after committing: reveal what it committed to
    for r in range(start):
        miner.forget(r)  # deltas kept for rounds that can no longer be finished
    miner.observer.event("started", f"mining job {job.job_id} from round {start} of {job.rounds} in {miner.mode} mode",
                         job=job.job_id, first_round=start, mode=miner.mode)
    for r in range(start, job.rounds):
        miner.observer.round = r
        wait_for_block(chain, schedule.round_start(r), timeout_s=_wait(job, chain, schedule.round_start(r)), poll_s=poll_s,
                       hotkey=miner.hotkey)
        try:
            take_part(miner, r, poll_s=poll_s)
        except Exception as exc:  # noqa: BLE001 (one round's failure is recorded; the miner goes on to the next)
            miner.observer.failure("round", r, exc)
    miner.observer.event("finished", f"job {job.job_id}: done", job=job.job_id)
    chain.idle(miner.hotkey, None)  # nothing more to do: a lock-step chain need not wait for this miner
    miner.observer.close()


def take_part(miner: Miner, r: int, *, poll_s: float = 0.25) -> None:
    """Round r from wherever this miner left it: train (or take the kept delta), commit, wait, reveal."""
    job, chain, schedule = miner.job, miner.chain, miner.job.schedule
    prepared = miner.pending(r) or miner.prepare(r)
    done = miner.submitted(prepared)
    if done == "revealed":  # killed after the reveal landed: nothing left to do
        miner.observer.event("revealed", f"round {r}: {prepared.digest[:12]}… was revealed before the restart",
                             round=r, late=False, before_restart=True)
        miner.forget(r)
    elif done == "other":  # cannot happen while the kept file is the one committed to; never reveal what was not
        miner.skip(r, "the chain holds a commitment of this hotkey to other bytes than the ones it kept")
    elif done == "committed" or miner.commit(prepared):
        wait_for_block(chain, schedule.commit_deadline(r), timeout_s=_wait(job, chain, schedule.commit_deadline(r)), poll_s=poll_s,
                       hotkey=miner.hotkey)
        if chain.block() >= schedule.reveal_deadline(r):  # a reveal now would land after the deadline and not count
            miner.skip(r, f"the chain is at block {chain.block()}, too late to reveal by block {schedule.reveal_deadline(r)}")
        else:
            miner.reveal(prepared)


def _wait(job: JobSpec, chain: Chain, block: int) -> float:
    return job.wait_s(block - chain.block())
