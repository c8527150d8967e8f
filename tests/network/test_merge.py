import pytest
import torch

from moeforge.errors import ConfigError
from moeforge.model.experts import ExpertWeights
from moeforge.model.slices import ExpertSlice, apply_slice, extract_slice
from moeforge.network.checks import global_norm
from moeforge.network.merge import MergeCandidate, choose_state, merge
from moeforge.network.scoring import holds, score_deltas
from tests.model.tiny import tiny_model
from tests.network.test_scoring import (
    SLOTS, _batches, _bit_identical, _noise_delta, _pattern_rows, _pretrained, _snapshot, _train,
)


def _with_norm(current: ExpertSlice, norm: float, seed: int) -> ExpertSlice:
    """A random-direction delta of exactly the given global L2 norm."""
    d = _noise_delta(current, 1.0, seed=seed)
    scale = norm / global_norm(d.state_dict())
    weights = {s: ExpertWeights(**{k: t * scale for k, t in vars(w).items() if t is not None}) for s, w in d.weights.items()}
    return ExpertSlice("delta", current.model_type, current.base_fingerprint, weights)


@pytest.fixture(scope="module")
def current():
    return extract_slice(tiny_model("deepseek_v2"), SLOTS, "fp")


def test_merge_clips_each_delta_to_the_median_norm_and_averages(current):
    d = {h: _with_norm(current, n, seed) for seed, (h, n) in enumerate([("5A", 1.0), ("5B", 2.0), ("5C", 10.0), ("5Neg", 3.0)])}
    scored = [("5C", 0.1, d["5C"]), ("5Neg", -0.1, d["5Neg"]), ("5A", 0.3, d["5A"]), ("5B", 0.2, d["5B"])]
    cand = merge(current, scored, top_k=3)
    assert cand.clip_norm == pytest.approx(2.0)
    assert cand.best_hotkey == "5A" and cand.best_single is d["5A"]
    assert cand.coefficients == pytest.approx({"5A": 1 / 3, "5B": 1 / 3, "5C": 0.2 / 3})  # 5C clipped from 10 to 2
    for h, c in cand.coefficients.items():  # each clipped delta's norm is at most the median
        assert len(cand.coefficients) * c * global_norm(d[h].state_dict()) <= 2.0 + 1e-9
    assert cand.shares == pytest.approx({"5A": 0.2, "5B": 0.4, "5C": 0.4})
    merged = cand.merged.state_dict()
    for key, t in merged.items():
        want = (d["5A"].state_dict()[key] + d["5B"].state_dict()[key] + 0.2 * d["5C"].state_dict()[key]) / 3
        assert t.dtype == torch.float64 and torch.allclose(t, want, rtol=1e-12, atol=1e-15)


def test_merge_takes_the_top_k_positive_scores_with_an_even_cohort_median(current):
    d = {h: _with_norm(current, n, seed) for seed, (h, n) in enumerate([("5A", 1.0), ("5B", 3.0), ("5C", 5.0)])}
    cand = merge(current, [("5A", 0.5, d["5A"]), ("5B", 0.4, d["5B"]), ("5C", 0.1, d["5C"])], top_k=2)
    assert set(cand.coefficients) == {"5A", "5B"} and cand.clip_norm == pytest.approx(2.0)
    assert cand.coefficients == pytest.approx({"5A": 0.5, "5B": 2 / 3 / 2})
    assert global_norm(cand.merged.state_dict()) <= 0.5 * (1.0 + 2.0) + 1e-9


def test_merge_without_a_positive_score_proposes_nothing(current):
    cand = merge(current, [("5A", 0.0, _with_norm(current, 1.0, 0)), ("5B", -1.0, _with_norm(current, 1.0, 1))], top_k=4)
    assert cand.merged is None and cand.best_single is None and cand.shares == {}
    with pytest.raises(ConfigError, match="top_k"):
        merge(current, [], top_k=0)


@pytest.fixture(scope="module")
def trained():
    model = _pretrained()
    current = extract_slice(model, SLOTS, "fp")
    honest = {f"5Honest{i}": _train(model, _pattern_rows(seed=i + 1), seed=i) for i in range(2)}
    return model, current, honest


def test_a_merge_of_honest_updates_that_helps_on_the_second_sample_is_adopted(trained):
    model, current, honest = trained
    verdicts = score_deltas(model, current, honest, _batches(_pattern_rows(seed=99)), noise_floor=1e-3)
    cand = merge(current, [(h, v.score, honest[h]) for h, v in verdicts.items()], top_k=2)
    before = _snapshot(model)
    state, decision = choose_state(model, current, cand, _batches(_pattern_rows(seed=97)))
    assert _bit_identical(model, before)
    assert decision.choice == "merged" and decision.merged_loss < decision.current_loss
    assert decision.contributions == cand.shares and sum(decision.contributions.values()) == pytest.approx(1.0)
    apply_slice(model, cand.merged)  # the adopted state is exactly current + merged as the model would hold it
    assert holds(model, state)
    apply_slice(model, current)


def test_the_best_single_update_is_adopted_when_the_merge_does_not_help(trained):
    model, current, honest = trained
    cand = MergeCandidate(_noise_delta(current, 2.0), honest["5Honest0"], "5Honest0", 1.0, {}, {})
    state, decision = choose_state(model, current, cand, _batches(_pattern_rows(seed=97)))
    assert decision.choice == "single" and decision.contributions == {"5Honest0": 1.0}
    assert decision.merged_loss > decision.current_loss > decision.single_loss
    assert not holds(model, state) and holds(model, current)


def test_nothing_is_adopted_when_no_candidate_beats_the_current_state(trained):
    model, current, _ = trained
    cand = MergeCandidate(_noise_delta(current, 2.0), _noise_delta(current, 3.0, seed=1), "5Noise", 1.0, {}, {})
    before = _snapshot(model)
    state, decision = choose_state(model, current, cand, _batches(_pattern_rows(seed=97)))
    assert decision.choice == "none" and state is current and decision.contributions == {}
    assert decision.merged_loss > decision.current_loss and decision.single_loss > decision.current_loss
    assert _bit_identical(model, before)
