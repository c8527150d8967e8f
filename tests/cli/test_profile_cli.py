"""Tests for moeforge/cli/profile.py: `moeforge profile` and `moeforge select` on the small testbed and on bad input."""

import json

import pytest
import typer
from typer.testing import CliRunner

from moeforge.cli import profile as commands
from moeforge.errors import MoeforgeError
from moeforge.model.fingerprint import model_fingerprint
from moeforge.model.load import load_model
from moeforge.profile.profile_file import load_profile
from moeforge.profile.selection import SelectConfig, load_expert_config, select_experts

app = typer.Typer()
app.command("profile")(commands.profile)
app.command("select")(commands.select)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_fails_naming(result, culprit):
    assert result.exit_code != 0
    assert isinstance(result.exception, MoeforgeError), result.output
    assert culprit in str(result.exception)


@pytest.fixture(scope="module")
def profiled(small_testbed, tmp_path_factory):
    """(testbed dir, output dir) after profiling 1,500 tokens of the maths corpus."""
    _, model_dir = small_testbed
    out = tmp_path_factory.mktemp("profiled")
    result = invoke("profile", model_dir, "math", "--out", out, "--tokens", 1500, "--batch-size", 4)
    assert result.exit_code == 0, result.output
    assert "routing of 1,500 tokens" in result.output
    return model_dir, out


def test_profile_writes_a_profile_of_this_model_and_a_heatmap(profiled):
    model_dir, out = profiled
    profile = load_profile(out / "profile.json", expect_fingerprint=model_fingerprint(load_model(model_dir)))
    assert profile.tokens == 1500 and profile.saliency is not None
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_select_writes_esft_s_selection_of_the_profile(profiled, tmp_path):
    _, out = profiled
    result = invoke("select", out / "profile.json", "--out", tmp_path / "experts.json", "--score", "gate")
    assert result.exit_code == 0, result.output
    want = select_experts(load_profile(out / "profile.json"), SelectConfig(score="gate"))
    assert load_expert_config(tmp_path / "experts.json") == want
    assert f"selected {want.count} of" in result.output
    into_folder = invoke("select", out / "profile.json", "--out", tmp_path, "--p", 0.5, "--max-per-layer", 2)
    assert into_folder.exit_code == 0, into_folder.output
    assert json.loads((tmp_path / "expert_config.json").read_text())["p"] == 0.5
    new_folder = invoke("select", out / "profile.json", "--out", f"{tmp_path / 'sel'}/")  # not there yet: the / says folder
    assert new_folder.exit_code == 0, new_folder.output
    assert (tmp_path / "sel").is_dir() and load_expert_config(tmp_path / "sel" / "expert_config.json") == select_experts(
        load_profile(out / "profile.json"), SelectConfig())


def test_profile_reads_a_job_data_file_with_its_fields(small_testbed, tmp_path):
    _, model_dir = small_testbed
    data = tmp_path / "job.jsonl"
    data.write_text("".join(json.dumps({"q": f"What is {n} + {n}?", "a": f" {2 * n}"}) + "\n" for n in range(40)))
    result = invoke("profile", model_dir, data, "--out", tmp_path / "out", "--tokens", 200, "--seq-len", 32,
                    "--prompt-field", "q", "--response-field", "a", "--no-saliency")
    assert result.exit_code == 0, result.output
    profile = load_profile(tmp_path / "out" / "profile.json")
    assert profile.tokens == 200 and profile.seq_len == 32 and profile.saliency is None
    profile_json = tmp_path / "out" / "profile.json"
    by_saliency = invoke("select", profile_json, "--out", tmp_path / "s.json", "--score", "saliency")
    assert_fails_naming(by_saliency, "without saliency")


def test_a_missing_data_file_is_named(small_testbed, tmp_path):
    _, model_dir = small_testbed
    assert_fails_naming(invoke("profile", model_dir, tmp_path / "nope.jsonl", "--out", tmp_path), "nope.jsonl")


def test_a_missing_model_directory_is_named(tmp_path):
    assert_fails_naming(invoke("profile", tmp_path / "no-model", "math", "--out", tmp_path / "o"), "no-model")


def test_bad_profile_options_name_the_flag(small_testbed, tmp_path):
    _, model_dir = small_testbed
    assert_fails_naming(invoke("profile", model_dir, "math", "--out", tmp_path, "--tokens", 0), "--tokens")
    (tmp_path / "job.jsonl").write_text('{"q": "1+1?", "a": "2"}\n')
    half_fields = invoke("profile", model_dir, tmp_path / "job.jsonl", "--out", tmp_path, "--prompt-field", "q")
    assert_fails_naming(half_fields, "--response-field")
    (tmp_path / "file").write_text("")
    assert_fails_naming(invoke("profile", model_dir, "math", "--out", tmp_path / "file"), "is a file")


@pytest.mark.parametrize("p", [0, 1.5, -0.2])
def test_p_outside_zero_to_one_is_refused(profiled, tmp_path, p):
    _, out = profiled
    assert_fails_naming(invoke("select", out / "profile.json", "--out", tmp_path / "e.json", "--p", p), "--p")
    assert not (tmp_path / "e.json").exists()


def test_a_missing_or_broken_profile_is_named(tmp_path):
    assert_fails_naming(invoke("select", tmp_path / "none.json", "--out", tmp_path / "e.json"), "none.json")
    (tmp_path / "broken.json").write_text("{}")
    assert_fails_naming(invoke("select", tmp_path / "broken.json", "--out", tmp_path / "e.json"), "broken.json")


def test_a_profile_where_a_selection_is_expected_is_named_as_such(profiled):
    from moeforge.errors import ConfigError

    _, out = profiled
    with pytest.raises(ConfigError) as error:
        load_expert_config(out / "profile.json")
    message = str(error.value)
    assert "is a routing profile" in message and "moeforge select" in message
    assert "extra" not in message and "missing" not in message  # not pydantic's list of refused keys
