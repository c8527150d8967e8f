"""The job's history: each validator's round report, the per-round entries, and the final record.

DESIGN.md "The network" and "The library". A validator publishes a `RoundReport` per round (JSON
in the store; its digest rides in the validator's on-chain result). At the end of the job the
owner turns the chain's results into one `RoundEntry` per round (the state the most validator
stake backed, and the report of that state's best-staked backer) and writes the `JobRecord`:
the final expert state, the history, each miner's contribution share and the held-out losses
before and after. The expert library reads the record from the store or `<run>/job/result.json`.

Contribution shares: each round that adopted a new state credits its miners with the adopted
state's `contributions` (summing to 1: each merged miner's leave-one-out marginal gain, merge.py),
weighted by that round's held-out gain on the merge
sample (loss of the round's base − loss of the adopted state); summed over the job and
normalised, the shares sum to 1. A round that kept its base credits no one.
"""

import logging
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from moeforge.network.checks import Verdict

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"


class VerdictEntry(BaseModel):
    """One submission's fate in a round, as a report records it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    hotkey: str
    accepted: bool
    reject: str | None = None  # a checks.Reject value
    detail: str
    score: float | None = None  # Proof-of-Loss on the scoring sample (nats)
    loss: float | None = None  # loss with the delta applied
    base_loss: float | None = None
    p_value: float | None = None  # the paired significance test of the gain
    general_loss: float | None = None  # general loss with the delta applied (the job's guard)
    evidence: float | None = None  # own-shard evidence statistic (evidence.py), nats per token
    evidence_p: float | None = None
    digest: str | None = None  # the delta's store address, when revealed
    commit_block: int | None = None

    @classmethod
    def of(cls, verdict: Verdict, digest: str | None = None, commit_block: int | None = None, evidence=None) -> "VerdictEntry":
        """`evidence`: the submission's evidence.Evidence, if it was computed."""
        return cls(
            hotkey=verdict.hotkey, accepted=verdict.accepted, reject=None if verdict.reject is None else str(verdict.reject),
            detail=verdict.detail, score=verdict.score, loss=verdict.loss, base_loss=verdict.base_loss,
            p_value=verdict.p_value, general_loss=verdict.general_loss,
            evidence=evidence.statistic if evidence is not None else None, evidence_p=evidence.p_value if evidence is not None else None,
            digest=digest, commit_block=commit_block,
        )


class RoundReport(BaseModel):
    """What one validator did in one round; put in the store, its digest committed on chain."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = 1
    job_id: str
    round: int = Field(ge=0)
    validator: str  # hotkey
    seed_block: int
    seed: str  # the seed block's hash
    base_sha256: str  # content digest of the state the round started from
    state_sha256: str  # content digest of the resulting state
    state_digest: str  # store address of the resulting state (packed, kind "state", signed by the validator)
    choice: Literal["merged", "single", "none"]
    best_hotkey: str | None = None
    accepted: list[str] = Field(default_factory=list)  # the merge cohort: top-k by score, in rank order
    contributions: dict[str, float] = Field(default_factory=dict)  # who the resulting state credits (sum 1, or empty)
    copies: dict[str, str] = Field(default_factory=dict)  # copier → original
    replays: dict[str, str] = Field(default_factory=dict)  # replayer → the earlier delta or update it repeats
    disagreements: dict[str, str] = Field(default_factory=dict)  # validator → how its previous-round state differs (audit)
    verdicts: list[VerdictEntry] = Field(default_factory=list)
    errors: dict[str, str] = Field(default_factory=dict)  # hotkey → unexpected error while judging it (not a verdict)
    score_rows: int
    merge_rows: int
    score_base_loss: float | None = None  # the base state's loss on the scoring sample (None: nothing scored)
    merge_base_loss: float | None = None  # the base state's loss on the merge sample
    merged_loss: float | None = None
    single_loss: float | None = None
    scale: float = 1.0  # the adopted step's scale after the general guard's line search
    marginal: dict[str, float] = Field(default_factory=dict)  # leave-one-out gain of each merged miner (nats)
    general_base_loss: float | None = None  # the base model's general loss (the drift budget's reference; None: no guard)
    current_general_loss: float | None = None  # the round's base state's
    adopted_general_loss: float | None = None  # the resulting state's
    timings: dict[str, float] = Field(default_factory=dict)  # seconds per step: fetch, check, evidence, score, merge, publish

    @property
    def adopted_loss(self) -> float | None:
        """Merge-sample loss of the resulting state."""
        return {"merged": self.merged_loss, "single": self.single_loss, "none": self.merge_base_loss}[self.choice]

    @property
    def gain(self) -> float:
        """Held-out improvement of the resulting state over the base, on the merge sample (0 when kept)."""
        if self.choice == "none" or self.merge_base_loss is None or self.adopted_loss is None:
            return 0.0
        return max(0.0, self.merge_base_loss - self.adopted_loss)


class Rejection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    reason: str
    detail: str


class RoundEntry(BaseModel):
    """One round of the job as the record keeps it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    round: int
    outcome: Literal["adopted", "kept", "no_result"]  # new state, same state, or no validator published in time
    base_sha256: str
    state_sha256: str
    state_digest: str | None = None
    backers: dict[str, float] = Field(default_factory=dict)  # validator hotkey → stake, for the winning state
    validators: dict[str, str] = Field(default_factory=dict)  # every validator that published → its state_sha256
    dissent: list[str] = Field(default_factory=list)  # validators that published another state than the winning one
    report: str | None = None  # store address of the winning backer's report
    choice: Literal["merged", "single", "none"] | None = None
    accepted: list[str] = Field(default_factory=list)
    scores: dict[str, float] = Field(default_factory=dict)  # every judged submission's score (0 if refused)
    rejections: dict[str, Rejection] = Field(default_factory=dict)
    losses: dict[str, float | None] = Field(default_factory=dict)  # score_base, merge_base, merged, single, adopted
    contributions: dict[str, float] = Field(default_factory=dict)
    gain: float = 0.0
    scale: float = 1.0  # the adopted step's scale after the general guard's line search

    def general_perplexity(self) -> tuple[float, float, float] | None:
        """(base model's, round's start, round's end) perplexity on the guard's general sample; None without a guard."""
        base, start = self.losses.get("general_base"), self.losses.get("general_current")
        if base is None or start is None:
            return None
        end = self.losses.get("general_adopted")
        return math.exp(base), math.exp(start), math.exp(end if end is not None and self.outcome == "adopted" else start)


class JobRecord(BaseModel):
    """The end of a job: what the expert library reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = 1
    job_id: str
    job_digest: str
    owner: str
    domain: str
    base_model: str
    base_fingerprint: str
    slots: list[tuple[int, int]]  # (layer, expert) trained
    final_state_sha256: str
    final_state_digest: str  # store address of the final expert state
    rounds: list[RoundEntry]
    contributions: dict[str, float]  # miner hotkey → share of the job's accepted improvement, summing to 1
    heldout_loss_before: float
    heldout_loss_after: float
    heldout_tokens: int
    general_ppl_before: float | None = None  # WikiText-2 test perplexity of the base's experts (report_rows rows)
    general_ppl_after: float | None = None  # and of the final state
    finished_block: int
    versions: dict[str, str]

    @property
    def accepted_rounds(self) -> int:
        return sum(entry.outcome == "adopted" for entry in self.rounds)


def round_entry(round: int, base_sha256: str, published: dict[str, str], backers: dict[str, float],
                report: RoundReport | None, report_digest: str | None) -> RoundEntry:
    """The record's entry for a round: `published` is every validator's state, `report` the winner's."""
    if report is None:
        return RoundEntry(round=round, outcome="no_result", base_sha256=base_sha256, state_sha256=base_sha256,
                          validators=published)
    scores = {v.hotkey: (v.score if v.accepted and v.score is not None else 0.0) for v in report.verdicts}
    rejections = {v.hotkey: Rejection(reason=v.reject, detail=v.detail) for v in report.verdicts if v.reject is not None}
    dissent = sorted(h for h, sha in published.items() if sha != report.state_sha256)
    if dissent:
        log.warning("round %d: validators %s published another state than the stake-backed %s…", round, dissent, report.state_sha256[:12])
    losses = {"score_base": report.score_base_loss, "merge_base": report.merge_base_loss, "merged": report.merged_loss,
              "single": report.single_loss, "adopted": report.adopted_loss, "general_base": report.general_base_loss,
              "general_current": report.current_general_loss, "general_adopted": report.adopted_general_loss}
    return RoundEntry(
        round=round, outcome="kept" if report.state_sha256 == base_sha256 else "adopted", base_sha256=base_sha256,
        state_sha256=report.state_sha256, state_digest=report.state_digest, backers=backers, validators=published, dissent=dissent,
        report=report_digest, choice=report.choice, accepted=list(report.accepted), scores=scores,
        rejections=rejections, losses=losses, contributions=dict(report.contributions), gain=report.gain, scale=report.scale,
    )


def contribution_shares(entries: list[RoundEntry]) -> dict[str, float]:
    """Each miner's share of the job (module docstring); sums to 1, or {} when no round adopted anything."""
    credit: dict[str, float] = {}
    for entry in entries:
        if entry.outcome != "adopted" or entry.gain <= 0:
            continue
        for hotkey, share in entry.contributions.items():
            credit[hotkey] = credit.get(hotkey, 0.0) + entry.gain * share
    total = sum(credit.values())
    return {hotkey: value / total for hotkey, value in sorted(credit.items())} if total > 0 else {}
