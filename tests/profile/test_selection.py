"""Tests for moeforge/profile/selection.py: ESFT's top-p rule, its JSON format, and the control selections."""

import itertools
import json
import random

import pytest
from pydantic import ValidationError

from moeforge.errors import ArtifactNotFound, ConfigError, ModelError
from moeforge.model.experts import ExpertSlot
from moeforge.profile.selection import (
    ExpertConfig,
    SelectConfig,
    coverage_selection,
    load_expert_config,
    random_selection,
    save_expert_config,
    select_experts,
    top_p_experts,
)
from tests.model.tiny import tiny_model
from tests.profile.synthetic import make_profile, random_profile


def _smallest_reaching(scores, p):
    """Brute force: the size of the smallest subset of experts whose scores sum to at least p."""
    for n in range(1, len(scores) + 1):
        if any(sum(c) >= p - 1e-9 for c in itertools.combinations(scores, n)):
            return n
    return len(scores)


@pytest.mark.parametrize(
    ("scores", "p", "want"),
    [
        ([0.5, 0.3, 0.1, 0.1], 0.6, (0, 1)),
        ([0.5, 0.3, 0.1, 0.1], 0.5, (0,)),  # reaching p exactly is enough
        ([0.1, 0.6, 0.3], 0.7, (1, 2)),  # ids come back ascending, whatever the rank
        ([0.3, 0.7], 0.01, (1,)),  # always at least one
        ([0.25, 0.25, 0.25, 0.25], 0.3, (0, 1)),  # ties go to the lower id
        ([0.2, 0.3, 0.3, 0.2], 0.5, (1, 2)),
        ([0.4, 0.3, 0.2, 0.1], 1.0, (0, 1, 2, 3)),  # p=1 takes every expert, float sums notwithstanding
        ([0.1] * 10, 0.3, (0, 1, 2)),  # 0.1+0.1+0.1 is 0.30000000000000004 or 0.2999…: still reaches 0.3
    ],
)
def test_top_p_takes_the_smallest_top_set_reaching_p(scores, p, want):
    assert top_p_experts(scores, p) == want


def test_top_p_agrees_with_brute_force_on_random_scores():
    rng = random.Random(0)
    for _ in range(200):
        raw = [rng.expovariate(1.0) ** 3 for _ in range(rng.randint(1, 8))]
        scores = [r / sum(raw) for r in raw]
        p = rng.uniform(0.01, 1.0)
        chosen = top_p_experts(scores, p)
        assert len(chosen) == _smallest_reaching(scores, p)
        left_out = [scores[e] for e in range(len(scores)) if e not in chosen]
        assert min(scores[e] for e in chosen) >= max(left_out, default=0), "the chosen are the top experts"


def test_min_and_max_per_layer_clamp_the_count():
    scores = [0.7, 0.1, 0.1, 0.05, 0.05]
    assert top_p_experts(scores, 0.5, min_per_layer=3) == (0, 1, 2)
    assert top_p_experts(scores, 0.95, max_per_layer=2) == (0, 1)
    assert top_p_experts(scores, 0.5, min_per_layer=9) == (0, 1, 2, 3, 4)


def test_default_p_is_esft_s_per_score():
    profile = random_profile(range(1, 4), 16)
    assert SelectConfig().threshold == 0.2 and SelectConfig(score="gate").threshold == 0.1
    for score, p in (("token", 0.2), ("gate", 0.1)):
        selected = select_experts(profile, SelectConfig(score=score))
        assert selected.p == p and selected.score_function == score and selected.method == "esft"
        assert selected.experts == {l: top_p_experts(getattr(profile, score)[l], p) for l in profile.layers}


def test_selection_describes_itself_and_counts():
    profile = make_profile({1: [10, 6, 2, 2], 3: [1, 1, 1, 17]})
    selected = select_experts(profile, SelectConfig(p=0.5))
    assert selected.experts == {1: (0,), 3: (3,)}
    assert selected.slots() == [ExpertSlot(1, 0), ExpertSlot(3, 3)]
    assert selected.count == 2 and selected.share == 2 / 8
    assert (selected.model_type, selected.num_experts, selected.top_k) == ("deepseek_v2", 4, 2)
    assert selected.tokens_profiled == profile.tokens and selected.base_fingerprint == profile.base_fingerprint


def test_saved_file_has_esft_s_keys_and_round_trips(tmp_path):
    selected = select_experts(random_profile(range(1, 4), 8))
    path = save_expert_config(selected, tmp_path / "cfg" / "experts.json")
    data = json.loads(path.read_text())
    assert list(data)[:3] == ["experts", "shared_experts", "non_expert_modules"]
    assert data["shared_experts"] is False and data["non_expert_modules"] is False
    assert data["experts"] == {str(l): list(ids) for l, ids in selected.experts.items()}
    assert {"version", "score_function", "p", "model_type", "num_experts", "top_k", "tokens_profiled",
            "base_fingerprint"} <= set(data)
    assert load_expert_config(path) == selected


@pytest.mark.parametrize(
    ("edit", "culprit"),
    [
        (lambda d: d.update(expert=d.pop("experts")), "expert"),
        (lambda d: d["experts"].update({"1": [3, 3]}), "ascending and distinct"),
        (lambda d: d["experts"].update({"2": [8]}), "outside 0..7"),
        (lambda d: d.update(p=1.5), "p:"),
        (lambda d: d.pop("base_fingerprint"), "base_fingerprint"),
    ],
)
def test_a_bad_expert_config_file_names_the_file_and_key(tmp_path, edit, culprit):
    data = select_experts(random_profile(range(1, 4), 8)).model_dump(mode="json")
    edit(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="bad.json: not a valid expert config") as error:
        load_expert_config(tmp_path / "bad.json")
    assert culprit in str(error.value)


def test_unreadable_and_missing_expert_configs_are_named(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2")
    with pytest.raises(ConfigError, match="x.json: not a JSON expert config"):
        load_expert_config(tmp_path / "x.json")
    with pytest.raises(ArtifactNotFound, match="none.json"):
        load_expert_config(tmp_path / "none.json")


def test_check_against_lists_every_entry_the_model_lacks():
    model = tiny_model("deepseek_v2")  # layer 0 dense; layers 1 and 2 MoE with 8 experts each
    good = ExpertConfig(experts={1: (0, 7), 2: (3,)}, model_type="deepseek_v2", num_experts=8, top_k=2,
                        base_fingerprint="")
    good.check_against(model)
    bad = good.model_copy(update={"experts": {0: (1,), 1: (2, 99), 2: (8,), 5: (0,)}, "num_experts": 128})
    with pytest.raises(ModelError) as error:
        bad.check_against(model)
    message = str(error.value)
    for culprit in ("layer 0 is not a MoE layer", "expert 99 does not exist in layer 1 (it has 8)",
                    "expert 8 does not exist in layer 2 (it has 8)", "layer 5 is not a MoE layer"):
        assert culprit in message
    with pytest.raises(ModelError, match="made for model_type 'qwen3_moe'"):
        good.model_copy(update={"model_type": "qwen3_moe"}).check_against(model)


def test_random_selection_keeps_the_counts_and_depends_only_on_the_seed():
    esft = select_experts(random_profile(range(1, 9), 16), SelectConfig(p=0.5))
    first, again, other = (random_selection(esft, 16, seed) for seed in (1, 1, 2))
    assert first == again
    assert first.experts != other.experts
    assert first.experts != esft.experts
    assert {l: len(ids) for l, ids in first.experts.items()} == {l: len(ids) for l, ids in esft.experts.items()}
    assert first.method == "random" and first.seed == 1 and first.num_experts == 16
    assert all(0 <= e < 16 for ids in first.experts.values() for e in ids)
    with pytest.raises(ConfigError, match="only 2"):
        random_selection(esft, 2, 0)


def test_coverage_selection_is_the_smallest_set_holding_the_share():
    profile = random_profile(range(1, 6), 12)
    covered = coverage_selection(profile, share=0.9)
    assert covered.method == "coverage" and covered.p == 0.9
    for layer, ids in covered.experts.items():
        shares = profile.token[layer]
        assert sum(shares[e] for e in ids) >= 0.9 - 1e-9
        assert len(ids) == _smallest_reaching(shares, 0.9)
    assert coverage_selection(profile, share=0.9, score="saliency").score_function == "saliency"
    with pytest.raises(ConfigError, match="share must be in"):
        coverage_selection(profile, share=0)


@pytest.mark.parametrize(
    "fields",
    [
        {"p": 0}, {"p": 1.01}, {"min_per_layer": 0}, {"min_per_layer": 3, "max_per_layer": 2},
        {"score": "popularity"}, {"top_p": 0.2},
    ],
)
def test_bad_select_configs_are_refused(fields):
    with pytest.raises(ValidationError):
        SelectConfig(**fields)


def test_selecting_by_a_score_the_profile_lacks_is_a_config_error():
    with pytest.raises(ConfigError, match="without saliency"):
        select_experts(make_profile({1: [1, 3]}, saliency=False), SelectConfig(score="saliency"))
