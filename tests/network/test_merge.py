import pytest
import torch

from moeforge.errors import ConfigError
from moeforge.model.experts import ExpertWeights
from moeforge.model.slices import ExpertSlice, apply_slice, extract_slice, linear_combination
from moeforge.network.checks import global_norm
from moeforge.network.merge import GeneralGuard, choose_state, leave_one_out, merge
from moeforge.network.scoring import batch_losses, holds, score_deltas, state_with
from tests.model.tiny import tiny_model
from tests.network.test_scoring import (
    SLOTS, _batches, _bit_identical, _noise_delta, _pattern_rows, _pretrained, _pretrained_rows, _snapshot, _train,
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
    assert cand.merged is None and cand.best_single is None and cand.coefficients == {}
    with pytest.raises(ConfigError, match="top_k"):
        merge(current, [], top_k=0)


@pytest.fixture(scope="module")
def trained():
    model = _pretrained()
    current = extract_slice(model, SLOTS, "fp")
    honest = {f"5Honest{i}": _train(model, _pattern_rows(seed=i + 1), seed=i) for i in range(2)}
    return model, current, honest


def _steps(cand):
    return {"merged": cand.merged, "single": cand.best_single}


def test_a_merge_of_honest_updates_that_helps_on_the_second_sample_is_adopted(trained):
    model, current, honest = trained
    verdicts = score_deltas(model, current, honest, _batches(_pattern_rows(seed=99)), significance=0.5)
    cand = merge(current, [(h, v.score, honest[h]) for h, v in verdicts.items()], top_k=2)
    before = _snapshot(model)
    state, decision = choose_state(model, current, _steps(cand), _batches(_pattern_rows(seed=97)), best_hotkey=cand.best_hotkey)
    assert _bit_identical(model, before)
    assert decision.choice == "merged" and decision.merged_loss < decision.current_loss and decision.scale == 1.0
    apply_slice(model, cand.merged)  # the adopted state is exactly current + merged as the model would hold it
    assert holds(model, state)
    apply_slice(model, current)


def test_the_best_single_update_is_adopted_when_the_merge_does_not_help(trained):
    model, current, honest = trained
    steps = {"merged": _noise_delta(current, 2.0), "single": honest["5Honest0"]}
    state, decision = choose_state(model, current, steps, _batches(_pattern_rows(seed=97)), best_hotkey="5Honest0")
    assert decision.choice == "single" and decision.contributions == {"5Honest0": 1.0}
    assert decision.merged_loss > decision.current_loss > decision.single_loss
    assert not holds(model, state) and holds(model, current)


def test_nothing_is_adopted_when_no_candidate_beats_the_current_state(trained):
    model, current, _ = trained
    steps = {"merged": _noise_delta(current, 2.0), "single": _noise_delta(current, 3.0, seed=1)}
    before = _snapshot(model)
    state, decision = choose_state(model, current, steps, _batches(_pattern_rows(seed=97)), best_hotkey="5Noise")
    assert decision.choice == "none" and state is current and decision.contributions == {}
    assert decision.merged_loss > decision.current_loss and decision.single_loss > decision.current_loss
    assert _bit_identical(model, before)


def _general(model, current, step, batches):
    """(general loss of current, of current + step) on `batches`."""
    here = batch_losses(model, batches).mean
    with_step = state_with(model, current, step)
    apply_slice(model, with_step)
    there = batch_losses(model, batches).mean
    apply_slice(model, current)
    return here, there


def test_the_general_guard_shrinks_a_step_by_halves_until_it_fits_and_never_adopts_beyond_the_limit(trained):
    model, current, honest = trained
    domain, general = _batches(_pattern_rows(seed=97)), _batches(_pretrained_rows())
    step = honest["5Honest0"]
    here, full = _general(model, current, step, general)
    assert full > here  # training on one pattern costs loss on another: the guard has something to hold
    half = _general(model, current, linear_combination(current, [(0.5, step)]), general)[1]
    assert half < full
    limit = (half + full) / 2  # the full step is over it, half the step fits
    state, decision = choose_state(model, current, {"merged": step, "single": None}, domain, best_hotkey="5Honest0",
                                   guard=GeneralGuard(general, limit, backtrack=3))
    assert decision.choice == "merged" and decision.scale == 0.5
    assert decision.general_loss == pytest.approx(half) and decision.general_loss <= limit
    assert [a.scale for a in decision.attempts] == [1.0, 0.5]
    assert decision.current_general_loss == pytest.approx(here)
    apply_slice(model, state)
    assert batch_losses(model, general).mean <= limit
    apply_slice(model, current)
    # a limit no scale within the backtracking reaches: nothing is adopted, and the model is left as it was
    before = _snapshot(model)
    state, decision = choose_state(model, current, {"merged": step, "single": step}, domain, best_hotkey="5Honest0",
                                   guard=GeneralGuard(general, here - 1.0, backtrack=2))
    assert decision.choice == "none" and state is current and len(decision.attempts) == 6
    assert all(a.general_loss > here - 1.0 for a in decision.attempts)
    assert _bit_identical(model, before)


def test_leave_one_out_credits_what_each_term_added_not_its_norm(trained):
    model, current, honest = trained
    useless = _noise_delta(current, 1e-6, seed=3)
    useless = _with_norm(current, global_norm(honest["5Honest0"].state_dict()) * 1e-4, seed=3)  # negligible, whatever its direction
    terms = {"5Honest0": (0.5, honest["5Honest0"]), "5Lazy": (0.5, useless)}
    step = linear_combination(current, [(c, d) for c, d in terms.values()])
    batches = _batches(_pattern_rows(seed=97))
    apply_slice(model, state_with(model, current, step))
    adopted_loss = batch_losses(model, batches).mean
    apply_slice(model, current)
    marginal, shares = leave_one_out(model, current, step, terms, batches, adopted_loss, scores={"5Honest0": 0.1, "5Lazy": 0.1})
    assert marginal["5Honest0"] > 0 and abs(marginal["5Lazy"]) < 1e-3 * marginal["5Honest0"]
    assert shares["5Honest0"] > 0.99 and sum(shares.values()) == pytest.approx(1.0)
    # rescaling the lazy delta to the honest one's norm does not buy it the honest one's share
    rescaled = _with_norm(current, global_norm(honest["5Honest0"].state_dict()), seed=3)
    terms = {"5Honest0": (0.5, honest["5Honest0"]), "5Lazy": (0.5, rescaled)}
    step = linear_combination(current, [(c, d) for c, d in terms.values()])
    apply_slice(model, state_with(model, current, step))
    adopted_loss = batch_losses(model, batches).mean
    apply_slice(model, current)
    _, shares = leave_one_out(model, current, step, terms, batches, adopted_loss, scores={"5Honest0": 0.1, "5Lazy": 0.1})
    assert shares["5Honest0"] > shares["5Lazy"]


def test_with_parts_each_part_is_clipped_and_averaged_on_its_own_and_the_parts_add_up(current):
    from moeforge.model.slices import padded, restricted

    first, second = current.slots[: len(current.slots) // 2], current.slots[len(current.slots) // 2:]
    part = {"5A": 0, "5B": 0, "5C": 0, "5D": 1}
    d = {h: padded(_with_norm(restricted(current, first if part[h] == 0 else second), n, seed), current)
         for seed, (h, n) in enumerate([("5A", 1.0), ("5B", 2.0), ("5C", 10.0), ("5D", 5.0)])}
    scored = [("5A", 0.3, d["5A"]), ("5B", 0.2, d["5B"]), ("5C", 0.1, d["5C"]), ("5D", 0.05, d["5D"])]
    cand = merge(current, scored, top_k=2, parts=part)
    assert set(cand.coefficients) == {"5A", "5B", "5D"}  # top 2 of part 0, and part 1's only delta
    assert cand.coefficients == pytest.approx({"5A": 1 / 2, "5B": (1.5 / 2) / 2, "5D": 1.0})  # part 0's median norm 1.5
    merged, by = cand.merged.state_dict(), {h: d[h].state_dict() for h in d}
    for key, t in merged.items():
        torch.testing.assert_close(t, by["5A"][key] / 2 + 0.75 * by["5B"][key] / 2 + by["5D"][key], rtol=0, atol=1e-12)
    assert cand.best_hotkey == "5A"
    unpartitioned = merge(current, scored, top_k=2)
    assert set(unpartitioned.coefficients) == {"5A", "5B"}  # without parts part 1 would not be merged at all
