"""Tests for moeforge/profile/profile_file.py: the profile's invariants, its JSON, and refusing what does not fit."""

import json

import pytest

from moeforge.errors import ArtifactNotFound, ConfigError, DataError, ModelError
from moeforge.profile.profile_file import RoutingProfile, load_profile, save_profile
from tests.profile.synthetic import make_profile, random_profile


def test_saved_then_loaded_is_equal(tmp_path):
    profile = random_profile(range(1, 5), 16)
    assert load_profile(save_profile(profile, tmp_path / "p.json")) == profile
    without = make_profile({1: [3, 1, 0, 4]}, saliency=False)
    assert load_profile(save_profile(without, tmp_path / "q.json")) == without


def test_the_file_is_json_with_one_line_per_layer(tmp_path):
    profile = random_profile(range(1, 4), 8)
    text = save_profile(profile, tmp_path / "p.json").read_text()
    data = json.loads(text)
    assert data["version"] == 1 and list(data["token"]) == ["1", "2", "3"]
    assert len(text.splitlines()) < 60, "vectors stay on one line each"


def test_a_profile_of_another_base_model_is_refused(tmp_path):
    path = save_profile(make_profile({1: [3, 1, 0, 4]}), tmp_path / "p.json")
    assert load_profile(path, expect_fingerprint="ab" * 32).tokens == 4
    with pytest.raises(ModelError, match=r"p\.json: .*made on base model abababababab.*fingerprint 0123456789ab"):
        load_profile(path, expect_fingerprint="0123456789ab" * 4)


@pytest.mark.parametrize(
    ("edit", "culprit"),
    [
        (lambda d: d.pop("tokens"), "tokens"),
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["counts"].update({"1": [9, 9, 9, 9]}), "counts of layer 1 sum to 36"),
        (lambda d: d["token"].pop("1"), "token has layers"),
        (lambda d: d["gate"].update({"1": [0.5, 0.5]}), "num_experts=4"),
    ],
)
def test_a_bad_file_is_a_data_error_naming_the_file_and_key(tmp_path, edit, culprit):
    data = make_profile({1: [3, 1, 0, 4]}).model_dump(mode="json")
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="bad.json") as error:
        load_profile(path)
    assert culprit in str(error.value)


def test_not_json_and_missing_files_are_named(tmp_path):
    (tmp_path / "bad.json").write_text("{ not json")
    with pytest.raises(DataError, match="bad.json: not a JSON routing profile"):
        load_profile(tmp_path / "bad.json")
    with pytest.raises(ArtifactNotFound, match="nothing.json"):
        load_profile(tmp_path / "nothing.json")


def test_unknown_scores_are_config_errors():
    with pytest.raises(ConfigError, match="'popularity'"):
        make_profile({1: [3, 1, 0, 4]}).scores("popularity")


def test_layers_must_ascend():
    data = make_profile({1: [2, 2], 2: [1, 3]}).model_dump()
    with pytest.raises(ValueError, match="ascending"):
        RoutingProfile(**{**data, "layers": (2, 1)})
