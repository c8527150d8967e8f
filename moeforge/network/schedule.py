"""The round schedule: which round and phase a chain block belongs to, and each round's deadlines.

DESIGN.md "The network", One round. A round is four consecutive phases of whole blocks,
train → commit → reveal → score, and rounds follow each other without gaps from `start_block`:

    round r starts at  start_block + r · (train_blocks + commit_blocks + reveal_blocks + score_blocks)

Every block number this module returns is **inclusive**:

- `round_start(r)`: the first block of round r (its first train block).
- `commit_deadline(r)`: the last block at which a commitment counts. A commitment counts when
  `round_start(r) <= block <= commit_deadline(r)`: a miner that finishes training early may
  commit during the train phase; the commit phase is the grace period after it.
- `reveal_deadline(r)`: the last block at which a reveal counts (`commit_deadline(r) < block`
  is the reveal window proper; an earlier reveal only exposes the miner's own delta).
- `seed_block(r) = reveal_deadline(r) + 1`: the first block of the score phase. Its hash seeds
  the validators' eval sampling; nobody can know it while reveals are still accepted.
- `round_end(r)`: the last block of round r, `round_start(r + 1) − 1`.
"""

import logging
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from moeforge.errors import ConfigError

log = logging.getLogger(__name__)


class Phase(StrEnum):
    TRAIN = "train"
    COMMIT = "commit"
    REVEAL = "reveal"
    SCORE = "score"


class RoundSchedule(BaseModel):
    """The owner publishes this with the job; every role derives the same deadlines from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = 1
    start_block: int = Field(ge=0)  # first block of round 0
    train_blocks: int = Field(ge=1)
    commit_blocks: int = Field(ge=1)
    reveal_blocks: int = Field(ge=1)
    score_blocks: int = Field(ge=1)

    @property
    def round_blocks(self) -> int:
        """Blocks in one round, all four phases."""
        return self.train_blocks + self.commit_blocks + self.reveal_blocks + self.score_blocks

    def round_start(self, r: int) -> int:
        """First block of round r."""
        _check_round(r)
        return self.start_block + r * self.round_blocks

    def commit_deadline(self, r: int) -> int:
        """Last block (inclusive) at which a round-r commitment counts."""
        return self.round_start(r) + self.train_blocks + self.commit_blocks - 1

    def reveal_deadline(self, r: int) -> int:
        """Last block (inclusive) at which a round-r reveal counts."""
        return self.commit_deadline(r) + self.reveal_blocks

    def seed_block(self, r: int) -> int:
        """The block whose hash seeds round r's eval sampling: the first block after the reveal deadline."""
        return self.reveal_deadline(r) + 1

    def round_end(self, r: int) -> int:
        """Last block (inclusive) of round r."""
        return self.round_start(r) + self.round_blocks - 1

    def phase_at(self, block: int) -> tuple[int, Phase]:
        """(round, phase) of `block`; ConfigError for a block before the schedule's first round."""
        if block < self.start_block:
            raise ConfigError(
                f"block {block} is before this schedule's first round, which starts at block {self.start_block}. "
                "Wait for the start block, or publish a schedule with an earlier start_block."
            )
        r, offset = divmod(block - self.start_block, self.round_blocks)
        for phase, length in (
            (Phase.TRAIN, self.train_blocks),
            (Phase.COMMIT, self.commit_blocks),
            (Phase.REVEAL, self.reveal_blocks),
        ):
            if offset < length:
                return r, phase
            offset -= length
        return r, Phase.SCORE

    def commit_counts(self, r: int, block: int) -> bool:
        """Whether a commitment made at `block` counts for round r."""
        return self.round_start(r) <= block <= self.commit_deadline(r)

    def reveal_counts(self, r: int, block: int) -> bool:
        """Whether a reveal posted at `block` counts for round r."""
        return self.round_start(r) <= block <= self.reveal_deadline(r)


def _check_round(r: int) -> None:
    if r < 0:
        raise ConfigError(f"round numbers start at 0; got round {r}.")
