"""The miner: each round, train the job's experts on its own shard and submit the delta by commit-reveal.

DESIGN.md "The network", steps 2–4. One round, top to bottom (`run_miner`):

1. wait for the round to start; `Miner.prepare`: read the round's base state (the one the most
   validator stake backed, `state.base_state`), load the base model, write that state into it,
   reduce the model to the miner's memory mode (`full`, `quantized` or `subset`,
   `extract.package`), and train H inner steps on `miner_shard(job, round, hotkey)` with the
   expert-only trainer → the exact delta, packed and signed (`transport.pack`);
2. `Miner.commit`: `sha256(delta digest ‖ hotkey ‖ round)` on chain, if it lands by the commit deadline;
3. wait for the commit deadline; `Miner.reveal`: upload the delta to the store, post its address.

The model is loaded afresh each round: a quantized or subset model cannot take new expert
weights in place, and loading is cheap next to training. While it loads, the miner holds the
full model for a moment; the reduced model is what it trains with.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

from moeforge.chain.protocol import Chain, not_registered, wait_for_block
from moeforge.errors import ChainError, ConfigError
from moeforge.extract.package import MODES, MinerMode, reduce_for_mode
from moeforge.model.slices import apply_slice, extract_slice
from moeforge.network.checks import global_norm
from moeforge.network.commitment import commitment, encode_commitment, encode_reveal
from moeforge.network.job import JobSpec
from moeforge.network.jobdata import check_fingerprint, decode_train_rows, shard
from moeforge.network.observe import Observer
from moeforge.network.shards import miner_shard
from moeforge.network.state import StateRef, base_state, fetch_state
from moeforge.network.transport import pack
from moeforge.store.protocol import Store, sha256_hex
from moeforge.train.esft import train_experts
from moeforge.train.metrics import StepCallback, TrainResult

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Prepared:
    """A trained, packed delta waiting to be committed and revealed."""

    round: int
    data: bytes  # the signed payload (transport.pack, kind "delta")
    digest: str  # its store address: sha256 of `data`
    base: StateRef  # the state it was trained from
    result: TrainResult
    delta_norm: float


class Miner:
    """One miner hotkey working on one job."""

    def __init__(
        self,
        *,
        chain: Chain,
        store: Store,
        keypair,
        job: JobSpec,
        mode: MinerMode = "full",
        run_dir: Path | None = None,
        metrics_port: int | None = None,
        on_step: StepCallback | None = None,
    ):
        if mode not in MODES:
            raise ConfigError(f"--mode {mode!r}: a miner runs in one of the memory modes {', '.join(MODES)}.")
        self.chain, self.store, self.keypair, self.job, self.mode = chain, store, keypair, job, mode
        self.hotkey = keypair.ss58_address
        if chain.metagraph().by_hotkey(self.hotkey) is None:
            raise ChainError(not_registered(self.hotkey, chain.metagraph().netuid))
        self.observer = Observer("miner", self.hotkey, run_dir, metrics_port=metrics_port)
        self.on_step = on_step
        self._rows = None  # the job's train rows, fetched once

    def prepare(self, r: int) -> Prepared:
        """Train round r's delta from the round's base state; pack and sign it."""
        timings: dict[str, float] = {}
        with self.observer.phase("fetch", timings):
            ref = base_state(self.chain, self.store, self.job, r)
            rows = self._train_rows()
        with self.observer.phase("load", timings):
            model = self._model_holding(ref)
        indices = miner_shard(rows.input_ids.shape[0], self.job.job_id, r, self.hotkey, self.job.shard_rows)
        with self.observer.phase("train", timings):
            delta, result = train_experts(
                model, self.job.slots, shard(rows, indices), self.job.miner_train_config(),
                base_fingerprint=self.job.base_fingerprint, on_step=self.on_step,
            )
        del model
        data = pack(delta.state_dict(), keypair=self.keypair, job=self.job.job_id, round=r, kind="delta")
        prepared = Prepared(r, data, sha256_hex(data), ref, result, global_norm(delta.state_dict()))
        self.observer.metric("moeforge_round").set(r)
        self.observer.metric("moeforge_miner_train_loss").set(result.final_loss)
        self.observer.metric("moeforge_miner_tokens_per_second").set(result.tokens_per_s)
        self.observer.metric("moeforge_miner_delta_norm").set(prepared.delta_norm)
        self.observer.event(
            "trained", f"round {r}: trained {result.history[-1].step} steps in {self.mode} mode from state "
            f"{ref.sha256[:10]}…, loss {result.history[0].loss:.3f} → {result.final_loss:.3f}, delta norm {prepared.delta_norm:.4g}",
            round=r, mode=self.mode, base=ref.sha256, base_round=ref.round, digest=prepared.digest,
            first_loss=result.history[0].loss, final_loss=result.final_loss, delta_norm=prepared.delta_norm,
            tokens_per_s=result.tokens_per_s, timings=timings,
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
        block = self.chain.commit(self.keypair, encode_commitment(commitment(prepared.digest, self.hotkey, r), r))
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
        self.store.put(prepared.data)
        block = self.chain.commit(self.keypair, encode_reveal(prepared.digest, r))
        late = block > self.job.schedule.reveal_deadline(r)
        self.observer.metric("moeforge_miner_submissions_total").labels(outcome="late_reveal" if late else "revealed").inc()
        self.observer.event("revealed", f"round {r}: revealed {prepared.digest[:12]}… ({len(prepared.data):,} bytes) in block {block}"
                            + (" (after the reveal deadline)" if late else ""), round=r, block=block, late=late)
        self.observer.flush_metrics()
        return block

    def _train_rows(self):
        if self._rows is None:
            data = self.store.get(self.job.train_data)
            self._rows = decode_train_rows(data, seq_len=self.job.seq_len, rows=self.job.train_rows)
        return self._rows

    def _model_holding(self, ref: StateRef):
        """The base model with the round's state written in, reduced to this miner's memory mode."""
        from moeforge.model.load import load_model

        model = load_model(self.job.base_model)
        check_fingerprint(model, self.job.base_fingerprint, self.job.base_model)
        reference = extract_slice(model, self.job.slots, self.job.base_fingerprint)
        apply_slice(model, fetch_state(self.store, ref, job=self.job, reference=reference))
        kept = {layer: list(ids) for layer, ids in self.job.subset_experts.items()}
        reduce_for_mode(model, self.mode, self.job.slots, kept)
        return model


def first_round(job: JobSpec, block: int) -> int:
    """The first round whose commitment, sent at `block`, would still land by its commit deadline."""
    if block < job.schedule.start_block:
        return 0
    r, _ = job.schedule.phase_at(block)
    return r if block < job.schedule.commit_deadline(r) else r + 1


def run_miner(miner: Miner, *, poll_s: float = 0.25) -> None:
    """Take part in every remaining round of the job, then return."""
    job, chain, schedule = miner.job, miner.chain, miner.job.schedule
    start = first_round(job, chain.block())
    miner.observer.event("started", f"mining job {job.job_id} from round {start} of {job.rounds} in {miner.mode} mode",
                         job=job.job_id, first_round=start, mode=miner.mode)
    for r in range(start, job.rounds):
        wait_for_block(chain, schedule.round_start(r), timeout_s=_wait(job, chain, schedule.round_start(r)), poll_s=poll_s)
        try:
            prepared = miner.prepare(r)
            if miner.commit(prepared):
                wait_for_block(chain, schedule.commit_deadline(r), timeout_s=_wait(job, chain, schedule.commit_deadline(r)), poll_s=poll_s)
                miner.reveal(prepared)
        except Exception as exc:  # noqa: BLE001 (one round's failure is recorded; the miner goes on to the next)
            miner.observer.failure("round", r, exc)
    miner.observer.event("finished", f"job {job.job_id}: done", job=job.job_id)
    miner.observer.close()


def _wait(job: JobSpec, chain: Chain, block: int) -> float:
    return job.wait_s(block - chain.block())
