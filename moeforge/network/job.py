"""The job every role works from: `JobSpec`, published by the owner to the store and named on chain.

DESIGN.md "The network", step 1. The owner puts the spec's JSON in the store and commits its
digest as the owner hotkey's commitment (`commitment.encode_job`); miners and validators read
that commitment, fetch the spec (the store re-hashes it, so it is exactly what the owner
signed on chain) and derive everything else from it: the schedule, their shards, the
initial expert state, the checks. The spec names only what miners may see: the train split's
rows are in the store, the held-out split is not, and `heldout_check` is keyed with the secret
salt, so it tells nothing to anyone without it.
"""

import json
import logging
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moeforge.chain.protocol import Chain
from moeforge.errors import ArtifactNotFound, ChainError, ConfigError
from moeforge.model.experts import ExpertSlot
from moeforge.network.commitment import JobPayload, decode_job, encode_job
from moeforge.network.schedule import RoundSchedule
from moeforge.network.shards import miner_part
from moeforge.store.protocol import Store
from moeforge.train.config import TrainConfig

log = logging.getLogger(__name__)

JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # travels in every signed payload's header
_HEX64 = r"^[0-9a-f]{64}$"
MAX_JOB_BYTES = 1 << 20


class SplitSpec(BaseModel):
    """How the job's records were split (splits.split_records); the salt itself is never published."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    validation: float = Field(0.05, ge=0, lt=1)
    heldout: float = Field(0.10, gt=0, lt=1)


class WarmStartSpec(BaseModel):
    """A library entry the job's initial state took trained weights from (library/warm.py): the job's lineage."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    entry: str = Field(pattern=_HEX64)
    slots: int = Field(ge=1)  # selected slots that started from this entry's weights


class JobSpec(BaseModel):
    """Everything a miner or validator needs to take part in the job, and nothing they must not see."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = 1
    job_id: str = Field(pattern=JOB_ID)
    owner: str  # the owner's hotkey (ss58); it signed the initial state
    created_block: int = Field(ge=0)
    # the base model
    base_model: str  # checkpoint folder every role loads (the same files wherever a role runs)
    base_fingerprint: str = Field(pattern=_HEX64)
    model_type: str
    seq_len: int = Field(ge=2)  # tokens per packed row, training and evaluation alike
    # the data
    domain: str  # what the data is: a vendored corpus name or the data file's name
    data_fingerprint: str = Field(pattern=_HEX64)  # of every record before the split (data.fingerprint)
    split: SplitSpec
    heldout_check: str = Field(pattern=_HEX64)  # HMAC-SHA256(salt, fingerprint of the held-out records)
    heldout_rows: int = Field(ge=1)
    train_data: str = Field(pattern=_HEX64)  # store address of the train split's packed rows (jobdata.py)
    train_rows: int = Field(ge=1)
    # the experts
    experts: dict[int, tuple[int, ...]]  # ESFT selection: layer → routed experts trained (the assigned slices)
    subset_experts: dict[int, tuple[int, ...]]  # experts a `subset`-mode miner holds per layer (a coverage set)
    initial_state: str = Field(pattern=_HEX64)  # store address of the round-0 expert state (packed, kind "state")
    initial_state_sha256: str = Field(pattern=_HEX64)  # its content digest (transport's payload_sha256)
    warm_start: tuple[WarmStartSpec, ...] = ()  # library entries the initial state started from; empty: the base's experts
    profile: str | None = Field(None, pattern=_HEX64)  # store address of the train split's routing profile (the library's index)
    # the rounds
    schedule: RoundSchedule
    rounds: int = Field(ge=1)
    block_seconds: float = Field(gt=0)  # the block time the schedule was sized for (timeouts, progress)
    inner_steps: int = Field(ge=1)  # H: optimizer steps a miner trains per round
    shard_passes: int = Field(1, ge=1, le=8)  # passes a miner makes over its shard in those steps (shard_rows)
    train: TrainConfig  # the miners' optimizer settings; steps come from inner_steps
    # the validation
    norm_bound: float = Field(gt=0)  # a delta's global L2 norm may be at most this × the current experts' norm
    significance: float = Field(0.05, gt=0, lt=1)  # a Proof-of-Loss gain counts only at p below this (paired t-test over rows)
    evidence_rows: int = Field(64, ge=0)  # own-shard and control rows per submission for the shard evidence; 0: none asked
    evidence_significance: float = Field(0.1, gt=0, le=1)  # the own-shard evidence must be significant at this level
    general_rows: int = Field(32, ge=0)  # rows of the general reference set (WikiText-2 validation) the guard scores; 0: no guard
    general_mix: float = Field(0.0, ge=0, lt=1)  # share of a miner's shard rows replaced by general text (WikiText-2
    # validation past the guard's rows); 0: none
    general_budget: float = Field(0.02, ge=0)  # adopted states keep general perplexity within (1 + this) × the base model's
    backtrack: int = Field(4, ge=0)  # halvings of a candidate update's scale tried before it is dropped
    outer_lr: float = Field(1.0, gt=0, le=4)  # the outer optimizer (outer.py); lr 1, momentum 0 is plain averaging
    outer_momentum: float = Field(0.0, ge=0, lt=1)
    top_k: int = Field(ge=1)  # deltas merged per round (per part)
    parts: int = Field(1, ge=1)  # the selected slots split into this many parts; a miner trains the one assigned to it each round
    merge_margin: float = Field(0.0, ge=0)  # a candidate state must beat the current one by more than this
    score_rows: int = Field(ge=1)  # held-out rows each submission is scored on
    merge_rows: int = Field(ge=1)  # further held-out rows the merge is judged on
    eval_batch_rows: int = Field(ge=1)

    @field_validator("train")
    @classmethod
    def _steps_from_inner_steps(cls, train: TrainConfig) -> TrainConfig:
        if train.steps is not None or train.tokens is not None:
            raise ValueError("set the miners' steps with inner_steps, not train.steps or train.tokens")
        return train

    @model_validator(mode="after")
    def _fits(self) -> "JobSpec":
        problems = []
        if self.score_rows + self.merge_rows > self.heldout_rows:
            problems.append(
                f"score_rows + merge_rows = {self.score_rows + self.merge_rows} exceeds the {self.heldout_rows} held-out rows"
            )
        if self.shard_rows < self.train.rows_per_step:
            problems.append(f"{self.shard_passes} passes over the shard leave {self.shard_rows} rows, fewer than one step's "
                            f"{self.train.rows_per_step}; lower shard_passes to at most inner_steps ({self.inner_steps})")
        if self.general_mix and round(self.shard_rows * self.general_mix) >= self.shard_rows:
            problems.append(f"general_mix {self.general_mix:g} leaves no domain rows in a shard of {self.shard_rows}")
        if self.shard_rows > self.train_rows:
            problems.append(f"a miner's shard of {self.shard_rows} rows exceeds the {self.train_rows} train rows")
        if not self.experts or any(not ids for ids in self.experts.values()):
            problems.append("the job selects no experts in some layer")
        elif self.parts > len(self.slots):
            problems.append(f"parts {self.parts} is more than the {len(self.slots)} selected experts to split")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def slots(self) -> list[ExpertSlot]:
        """The assigned expert slices, sorted."""
        return sorted(ExpertSlot(layer, expert) for layer, ids in self.experts.items() for expert in ids)

    def part_slots(self, part: int) -> list[ExpertSlot]:
        """Part `part` of the sorted slots cut into `parts` contiguous ranges (layer ranges) of balanced size."""
        if not 0 <= part < self.parts:
            raise ConfigError(f"part {part}: job {self.job_id} has parts 0..{self.parts - 1}.")
        slots = self.slots
        return slots[round(part * len(slots) / self.parts): round((part + 1) * len(slots) / self.parts)]

    def part_of(self, round: int, hotkey: str) -> int:
        """The part `hotkey` trains in `round` (`shards.miner_part`): the same in every role."""
        return miner_part(self.parts, self.job_id, round, hotkey)

    def assigned_slots(self, round: int, hotkey: str) -> list[ExpertSlot]:
        """The slots `hotkey` trains and submits a delta for in `round`."""
        return self.part_slots(self.part_of(round, hotkey))

    @property
    def shard_rows(self) -> int:
        """Rows in one miner's shard per round: the rows of its H steps, each trained on `shard_passes` times.

        More passes over fewer rows leave a clearer mark of the shard on the delta (evidence.py) at
        the same compute, for less data diversity per round."""
        return -(-self.inner_steps * self.train.rows_per_step // self.shard_passes)

    @property
    def general_mix_rows(self) -> int:
        """Rows of general text in a miner's shard each round (the rest are its domain rows)."""
        return round(self.shard_rows * self.general_mix)

    @property
    def last_round(self) -> int:
        return self.rounds - 1

    def miner_train_config(self) -> TrainConfig:
        """The TrainConfig a miner runs each round: H steps, no checkpoints."""
        return self.train.model_copy(update={"steps": self.inner_steps, "checkpoint_every": 0})

    def wait_s(self, blocks: int) -> float:
        """A generous timeout for waiting `blocks` blocks: three times their expected duration, plus a minute."""
        return 60.0 + 3.0 * max(0, blocks) * self.block_seconds


def publish_job(spec: JobSpec, *, store: Store, chain: Chain, keypair) -> tuple[str, int]:
    """(the spec's store digest, the block its commitment landed in); `keypair` must be the owner's."""
    if keypair.ss58_address != spec.owner:
        raise ConfigError(f"job {spec.job_id}: the spec names owner {spec.owner}, but it is being published by {keypair.ss58_address}.")
    digest = store.put(spec.model_dump_json().encode("utf-8"))
    block = chain.commit(keypair, encode_job(digest))
    log.info("published job %s as %s… in block %d", spec.job_id, digest[:12], block)
    return digest, block


def read_job(chain: Chain, store: Store, owner: str) -> tuple[str, JobSpec] | None:
    """The owner's current job (digest, spec), or None while the owner has committed no job."""
    committed = chain.commitment(owner)
    if committed is None:
        return None
    payload = decode_job(committed.data)
    if not isinstance(payload, JobPayload):
        return None
    return payload.job, load_job(store, payload.job, owner=owner)


def load_job(store: Store, digest: str, *, owner: str | None = None) -> JobSpec:
    """The JobSpec stored at `digest`; DataError-like ConfigError naming every bad field."""
    if store.size(digest) > MAX_JOB_BYTES:
        raise ConfigError(f"job {digest[:16]}… in {store.url} is {store.size(digest):,} bytes; a job spec is at most {MAX_JOB_BYTES:,}.")
    raw = store.get(digest)
    try:
        spec = JobSpec.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ConfigError(f"job {digest[:16]}… in {store.url} is not a valid job spec: {str(exc).splitlines()[0]}") from None
    if owner is not None and spec.owner != owner:
        raise ConfigError(f"job {digest[:16]}… names owner {spec.owner}, but it was committed by {owner}; refused.")
    return spec


def wait_for_job(chain: Chain, store: Store, owner: str, *, timeout_s: float, poll_s: float = 0.25,
                 hotkey: str | None = None) -> tuple[str, JobSpec]:
    """Poll the owner's commitment until it names a job; ChainError after timeout_s. With HOTKEY (the waiting role's),
    each poll tells the chain the role is idle for one block, so a lock-step chain moves on while it waits."""
    if chain.metagraph().by_hotkey(owner) is None:
        raise ChainError(
            f"owner hotkey {owner} is not registered on this chain, so it cannot publish a job. "
            "Check --owner (the hotkey `moeforge owner publish` printed) and --chain."
        )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = read_job(chain, store, owner)
        except ArtifactNotFound:  # committed before the spec is visible in an eventually consistent store
            found = None
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise ChainError(
                f"owner {owner} published no job within {timeout_s:.0f} s (chain at block {chain.block()}). "
                "Start the owner (`moeforge owner run`), or check --owner, --chain and --store."
            )
        if hotkey is not None:
            chain.idle(hotkey, chain.block() + 1)
        time.sleep(poll_s)
