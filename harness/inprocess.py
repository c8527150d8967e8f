"""A whole network in one process, on a manually stepped local chain: rounds run phase by phase.

For tests and benchmarks (`bench/decentral_vs_central`): the same Owner, Miner and Validator
objects the `moeforge owner|miner|validator` processes run, talking only through a `LocalChain`
and a `Store`, but driven in order by `InProcessNetwork.run_round`, which steps the chain to each
deadline itself: miners train and commit in the train phase, reveal after the commit deadline,
validators judge after the seed block. Nothing waits on a wall clock, so a round costs exactly
its work, and `RoundTimings` reports the seconds of each phase.

`miners` may hold any participant with a miner's `hotkey`, `prepare`, `commit` and `reveal`, such
as the red-team miners of `adversary.py`; one with an `after_reveal_deadline(prepared)` method is
called once more after the reveal deadline, before validators judge (a late revealer). What each
participant prepared in the round is kept in `prepared[round][hotkey]`, in the order they ran.
"""

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from moeforge.chain.keys import keypair_from_uri
from moeforge.chain.local import LocalChain
from moeforge.data.records import Record
from moeforge.extract.package import MinerMode
from moeforge.network.history import JobRecord, RoundReport
from moeforge.network.miner import Miner, Prepared
from moeforge.network.owner import JobRequest, Owner
from moeforge.network.role import RoleContext
from moeforge.network.validator import Validator
from moeforge.store.protocol import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundTimings:
    """Seconds per phase of one in-process round (wall time of the calls, all roles in turn)."""

    round: int
    train_s: dict[str, float]  # miner hotkey → prepare (fetch state, load, train, pack)
    commit_s: float  # all miners' commitments
    reveal_s: float  # all miners' uploads and reveals
    score_s: dict[str, float]  # validator hotkey → score_round (fetch, check, score, merge, publish, weights)
    validator_steps: dict[str, dict[str, float]]  # validator hotkey → its report's per-step seconds

    @property
    def total_s(self) -> float:
        return sum(self.train_s.values()) + self.commit_s + self.reveal_s + sum(self.score_s.values())


@dataclass
class InProcessNetwork:
    """An owner, miners and validators on one manual-clock chain; build with `create`."""

    chain: LocalChain
    store: Store
    owner: Owner
    miner_keys: list
    miner_modes: list[MinerMode]
    validator_keys: list
    records: list[Record]
    salt: str
    run_dir: Path
    miners: list[Miner] = field(default_factory=list)
    validators: list[Validator] = field(default_factory=list)
    reports: dict[int, dict[str, RoundReport]] = field(default_factory=dict)  # round → validator hotkey → report
    timings: list[RoundTimings] = field(default_factory=list)
    prepared: dict[int, dict[str, Prepared]] = field(default_factory=dict)  # round → hotkey → what it prepared
    job_digest: str | None = None

    @classmethod
    def create(
        cls,
        run_dir: Path,
        store: Store,
        request: JobRequest,
        records: list[Record],
        salt: str,
        *,
        miner_modes: list[MinerMode],
        validator_stakes: list[float],
        library=None,
        chain_seed: int | None = None,
    ) -> "InProcessNetwork":
        """A fresh chain under run_dir with dev keys (//owner, //miner/i, //validator/j) registered and staked; `library`: the
        owner's expert library (moeforge.library.open.Library), None for none; `chain_seed`: fixes the chain's block hashes
        (and so every sample validators draw from them), random when None."""
        run_dir = Path(run_dir)
        genesis = None if chain_seed is None else hashlib.sha256(f"moeforge-test-chain-{chain_seed}".encode()).digest()
        chain = LocalChain(run_dir / "chain.sqlite", block_seconds=0, genesis_seed=genesis)
        owner_key = keypair_from_uri("//moeforge/owner")
        miner_keys = [keypair_from_uri(f"//moeforge/miner/{i}") for i in range(len(miner_modes))]
        validator_keys = [keypair_from_uri(f"//moeforge/validator/{j}") for j in range(len(validator_stakes))]
        for key in [owner_key, *miner_keys, *validator_keys]:
            chain.register(key.ss58_address)
        for key, stake in zip(validator_keys, validator_stakes, strict=True):
            chain.add_stake(key.ss58_address, stake)
        owner = Owner(RoleContext(chain, store, owner_key, run_dir=run_dir / "job"), request=request, records=records, salt=salt,
                      library=library)
        return cls(chain, store, owner, miner_keys, list(miner_modes), validator_keys, list(records), salt, run_dir)

    def publish(self):
        """Publish the job and start every miner and validator on it; → the JobSpec."""
        self.job_digest, job = self.owner.publish()
        self.miners = [
            Miner(RoleContext(self.chain, self.store, key, run_dir=self.run_dir / f"miner-{i}"), job=job, mode=mode)
            for i, (key, mode) in enumerate(zip(self.miner_keys, self.miner_modes, strict=True))
        ]
        self.validators = [self._validator(j) for j in range(len(self.validator_keys))]
        return job

    def run_round(self, r: int) -> RoundTimings:
        """Round r, phase by phase, stepping the chain to each deadline; → the seconds each phase took."""
        schedule = self.owner.job.schedule
        self.advance_to(schedule.round_start(r))
        train_s, prepared = {}, []
        for miner in self.miners:
            start = time.perf_counter()
            prepared.append(miner.prepare(r))
            self.prepared.setdefault(r, {})[miner.hotkey] = prepared[-1]
            train_s[miner.hotkey] = time.perf_counter() - start
        start = time.perf_counter()
        for miner, p in zip(self.miners, prepared):
            miner.commit(p)
        commit_s = time.perf_counter() - start
        self.advance_to(schedule.commit_deadline(r))
        start = time.perf_counter()
        for miner, p in zip(self.miners, prepared):
            miner.reveal(p)
        reveal_s = time.perf_counter() - start
        self.advance_to(schedule.seed_block(r))
        for miner, p in zip(self.miners, prepared):
            if hasattr(miner, "after_reveal_deadline"):
                miner.after_reveal_deadline(p)
        score_s, steps = {}, {}
        for validator in self.validators:
            start = time.perf_counter()
            report = validator.score_round(r)
            score_s[validator.hotkey] = time.perf_counter() - start
            steps[validator.hotkey] = dict(report.timings)
            self.reports.setdefault(r, {})[validator.hotkey] = report
        self.advance_to(schedule.round_end(r))
        timing = RoundTimings(r, train_s, commit_s, reveal_s, score_s, steps)
        self.timings.append(timing)
        log.info("in-process round %d: %.1f s (train %.1f s, score %.1f s)", r, timing.total_s,
                 sum(train_s.values()), sum(score_s.values()))
        return timing

    def finish(self) -> JobRecord:
        """Step to the end of the last round and have the owner write the job's record."""
        job = self.owner.job
        self.advance_to(job.schedule.round_end(job.last_round))
        return self.owner.finish()

    def restart_validator(self, j: int) -> Validator:
        """Drop validator j and start it again from its run folder, as after a crash."""
        self.validators[j] = self._validator(j)
        return self.validators[j]

    def advance_to(self, block: int) -> int:
        """Step the manual clock until the head is at least `block`."""
        head = self.chain.block()
        return self.chain.step(block - head) if head < block else head

    def _validator(self, j: int) -> Validator:
        ctx = RoleContext(self.chain, self.store, self.validator_keys[j], run_dir=self.run_dir / f"validator-{j}")
        return Validator(ctx, job=self.owner.job, job_digest=self.job_digest, records=self.records, salt=self.salt)
