"""`moeforge extract` and `moeforge train` on the small testbed, end to end through the root app."""

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from moeforge.cli.main import app
from moeforge.data.corpora import load_corpus
from moeforge.model.fingerprint import model_fingerprint
from moeforge.model.load import load_model
from moeforge.model.slices import TENSORS_FILE, apply_slice, load_slice, remove_delta
from moeforge.profile.profile_file import save_profile
from moeforge.profile.selection import SelectConfig, save_expert_config, select_experts
from moeforge.profile.stats import ProfileConfig, profile_records

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def selected(small_testbed, tmp_path_factory):
    """(testbed dir, profile path, expert config path) for the maths corpus."""
    from transformers import AutoTokenizer

    _, model_dir = small_testbed
    model = load_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    profile = profile_records(model, tokenizer, load_corpus("math", "train"), ProfileConfig(tokens=2048, seq_len=64),
                              base_fingerprint=model_fingerprint(model))
    folder = tmp_path_factory.mktemp("selected")
    save_profile(profile, folder / "profile.json")
    save_expert_config(select_experts(profile, SelectConfig(score="token")), folder / "experts.json")
    return model_dir, folder / "profile.json", folder / "experts.json"


def test_extract_writes_the_selected_experts_and_the_mode_table(selected, tmp_path):
    model_dir, profile, experts = selected
    result = invoke("extract", model_dir, experts, "--out", tmp_path / "slice", "--profile", profile)
    assert result.exit_code == 0, result.output
    for mode in ("full", "quantized", "subset"):
        assert mode in result.output
    model = load_model(model_dir)
    piece = load_slice(tmp_path / "slice", expect_fingerprint=model_fingerprint(model))
    from moeforge.profile.selection import load_expert_config
    assert piece.slots == load_expert_config(experts).slots()
    assert all(k.startswith("model.layers.") and ".mlp.experts." in k for k in load_file(tmp_path / "slice" / TENSORS_FILE))


def test_train_writes_a_delta_that_lowers_the_training_loss(selected, tmp_path):
    model_dir, _, experts = selected
    result = invoke("train", model_dir, experts, "--out", tmp_path, "--tokens", 4096, "--batch-size", 4, "--seq-len", 64,
                    "--lr", 5e-3)
    assert result.exit_code == 0, result.output
    model = load_model(model_dir)
    fingerprint = model_fingerprint(model)
    delta = load_slice(tmp_path / "delta", expect_fingerprint=fingerprint)
    assert delta.kind == "delta" and any(t.abs().sum() > 0 for t in delta.state_dict().values())
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    apply_slice(model, delta)
    remove_delta(model, delta)
    assert model_fingerprint(model) == fingerprint


def test_train_refuses_bad_input(selected, tmp_path):
    model_dir, _, experts = selected
    too_long = invoke("train", model_dir, experts, "--out", tmp_path, "--seq-len", 4096)
    assert too_long.exit_code == 1 and "max_position_embeddings" in too_long.stderr
    missing = invoke("train", model_dir, tmp_path / "nope.json", "--out", tmp_path)
    assert missing.exit_code == 1 and "nope.json" in missing.stderr
    bad_lr = invoke("train", model_dir, experts, "--out", tmp_path, "--lr", -1)
    assert bad_lr.exit_code == 1 and "--lr" in bad_lr.stderr
