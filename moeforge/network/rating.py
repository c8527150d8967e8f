"""Ratings: each round's scores → a smoothed rating per miner → normalised weights for the chain.

DESIGN.md "The network", step 7. A miner earns in a round only for what the round adopted: its
**share** of the round is its contribution to the adopted state (merge.py: its leave-one-out
marginal gain on the merge sample over the cohort's, or 1 for the single update adopted), never
its score alone nor the size of its delta, so a round where every update helps less (late in a
job) counts as much as an early one. Rejected, copied, unproven and insignificant submissions get
0, as does everyone in a round that adopted nothing; miners who submitted nothing get 0 too, so
their rating decays.
The rating is an exponential moving average of those shares:

    rating ← (1 − alpha) · rating + alpha · share,     alpha = 0.2 by default

so a miner's rating halves after ln 0.5 / ln 0.8 ≈ 3.1 rounds without a useful submission, and
one lucky round moves it by at most alpha. Weights are the ratings of the hotkeys currently
registered, normalised to sum 1; with no positive rating there are no weights to set.

All functions are pure; `RatingState` is versioned JSON (`model_dump_json` / `model_validate_json`).
"""

import logging
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from moeforge.errors import ConfigError
from moeforge.network.checks import Verdict

log = logging.getLogger(__name__)

ALPHA = 0.2
FORGET_BELOW = 1e-9  # ratings that decayed below this are dropped, so the state does not grow forever


class RatingState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = 1
    alpha: float = Field(ALPHA, gt=0, le=1)  # weight of the newest round in the moving average
    round: int | None = None  # the last round folded in
    ratings: dict[str, float] = Field(default_factory=dict)  # hotkey → moving average of its round shares


def round_scores(verdicts: Mapping[str, Verdict], contributions: Mapping[str, float]) -> dict[str, float]:
    """A round's score per judged hotkey: its contribution to the adopted state, 0 for everyone else."""
    return {hotkey: max(0.0, contributions.get(hotkey, 0.0)) if v.accepted else 0.0 for hotkey, v in verdicts.items()}


def round_shares(scores: Mapping[str, float]) -> dict[str, float]:
    """Each hotkey's share of the round's positive scores (sum 1), or all 0 when none is positive."""
    positive = {h: max(0.0, s) for h, s in scores.items()}
    total = sum(positive.values())
    return {h: (s / total if total > 0 else 0.0) for h, s in positive.items()}


def update_ratings(state: RatingState, round: int, scores: Mapping[str, float]) -> RatingState:
    """The state after folding in `round`'s scores (hotkeys absent from `scores` decay)."""
    if state.round is not None and round <= state.round:
        raise ConfigError(f"round {round} is not after the last round folded into the ratings ({state.round}); each round counts once.")
    shares = round_shares(scores)
    ratings = {}
    for hotkey in sorted(set(state.ratings) | set(shares)):
        rating = (1 - state.alpha) * state.ratings.get(hotkey, 0.0) + state.alpha * shares.get(hotkey, 0.0)
        if rating >= FORGET_BELOW:
            ratings[hotkey] = rating
    log.info("round %d ratings: %d miners rated, %d scored this round", round, len(ratings), sum(s > 0 for s in shares.values()))
    return state.model_copy(update={"round": round, "ratings": ratings})


def forget(state: RatingState, registered: set[str] | frozenset[str]) -> RatingState:
    """Drop the ratings of hotkeys no longer registered, so a uid's next owner starts from nothing."""
    return state.model_copy(update={"ratings": {h: r for h, r in state.ratings.items() if h in registered}})


def chain_weights(state: RatingState, uids: Mapping[str, int]) -> dict[int, float]:
    """uid → weight over registered hotkeys with a positive rating, summing to 1; {} when there is none."""
    rated = {}
    for hotkey, rating in state.ratings.items():
        if hotkey in uids and rating > 0:
            rated[uids[hotkey]] = rated.get(uids[hotkey], 0.0) + rating
    total = sum(rated.values())
    if total <= 0:
        return {}
    return {uid: rating / total for uid, rating in sorted(rated.items())}
