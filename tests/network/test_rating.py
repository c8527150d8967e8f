import math

import pytest
from pydantic import ValidationError

from moeforge.errors import ConfigError
from moeforge.network.checks import Reject, Verdict
from moeforge.network.rating import (
    RatingState, chain_weights, forget, round_scores, round_shares, update_ratings,
)


def test_round_scores_pay_the_adopted_states_contributions_and_nothing_for_a_score_alone():
    verdicts = {
        "5A": Verdict("5A", None, "ok", 0.3),
        "5B": Verdict("5B", None, "ok", 0.1),
        "5Unmerged": Verdict("5Unmerged", None, "ok", 0.3),  # significant, but not in the adopted state
        "5Copy": Verdict("5Copy", Reject.COPY, "a copy of 5A's submission"),
        "5NaN": Verdict("5NaN", Reject.NON_FINITE_LOSS, "eval batch 2 of 4: loss nan"),
        "5Flat": Verdict("5Flat", Reject.NO_IMPROVEMENT, "Δloss 0", 0.0),
    }
    scores = round_scores(verdicts, {"5A": 0.75, "5B": 0.25, "5Copy": 0.5})  # a contribution to a rejected hotkey never counts
    assert scores == {"5A": 0.75, "5B": 0.25, "5Unmerged": 0.0, "5Copy": 0.0, "5NaN": 0.0, "5Flat": 0.0}
    assert round_shares(scores) == pytest.approx({"5A": 0.75, "5B": 0.25, "5Unmerged": 0.0, "5Copy": 0.0, "5NaN": 0.0, "5Flat": 0.0})
    assert round_scores(verdicts, {}) == dict.fromkeys(verdicts, 0.0)  # a round that adopted nothing pays no one
    assert round_shares({"5A": 0.0, "5B": -1.0}) == {"5A": 0.0, "5B": 0.0}

def test_ratings_are_an_ema_of_round_shares_and_absent_miners_decay():
    alpha = 0.25
    state = RatingState(alpha=alpha)
    state = update_ratings(state, 0, {"5A": 3.0, "5B": 1.0})
    assert state.ratings == pytest.approx({"5A": alpha * 0.75, "5B": alpha * 0.25}) and state.round == 0
    state = update_ratings(state, 1, {"5B": 2.0})  # 5A did not submit
    assert state.ratings["5A"] == pytest.approx((1 - alpha) * alpha * 0.75)
    assert state.ratings["5B"] == pytest.approx((1 - alpha) * alpha * 0.25 + alpha * 1.0)
    rounds_to_halve = math.log(0.5) / math.log(1 - alpha)
    a1 = state.ratings["5A"]
    for r in range(2, 2 + math.ceil(rounds_to_halve)):
        state = update_ratings(state, r, {"5B": 1.0})
    assert state.ratings["5A"] <= a1 / 2


def test_a_round_is_folded_in_once():
    state = update_ratings(RatingState(), 4, {"5A": 1.0})
    with pytest.raises(ConfigError, match="round 4 is not after the last round"):
        update_ratings(state, 4, {"5A": 1.0})


def test_weights_are_normalised_over_registered_hotkeys_and_empty_when_all_zero():
    state = RatingState(round=3, ratings={"5A": 0.3, "5B": 0.1, "5Gone": 0.6})
    weights = chain_weights(state, {"5A": 7, "5B": 2, "5C": 9})
    assert weights == pytest.approx({2: 0.25, 7: 0.75}) and sum(weights.values()) == pytest.approx(1.0)
    assert chain_weights(RatingState(), {"5A": 1}) == {}
    assert chain_weights(update_ratings(RatingState(), 0, {"5A": 0.0}), {"5A": 1}) == {}
    assert forget(state, {"5A"}).ratings == {"5A": 0.3}


def test_long_idle_ratings_are_forgotten_and_the_state_round_trips_through_json():
    state = update_ratings(RatingState(alpha=0.9), 0, {"5A": 1.0})
    for r in range(1, 12):
        state = update_ratings(state, r, {})
    assert state.ratings == {}
    state = update_ratings(state, 12, {"5B": 0.5, "5C": 0.25})
    assert RatingState.model_validate_json(state.model_dump_json()) == state
    with pytest.raises(ValidationError):
        RatingState.model_validate_json('{"version": 1, "alpa": 0.1}')
