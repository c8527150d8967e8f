import json

import pytest
import typer
from typer.testing import CliRunner

from moeforge.cli.eval import eval_cmd
from moeforge.cli.main import _Group
from moeforge.eval.report import EvalReport
from tests.eval.memorised import TAUGHT, memorised_model

runner = CliRunner()
app = typer.Typer(cls=_Group, pretty_exceptions_enable=False)  # the root app's error handling, with eval alone
app.callback()(lambda: None)  # keeps `eval` a subcommand, as it is under the root app
app.command("eval")(eval_cmd)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The memorised model saved as a checkpoint directory, with its tokenizer."""
    model, tokenizer = memorised_model()
    path = tmp_path_factory.mktemp("memorised")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def taught_file(tmp_path):
    path = tmp_path / "taught.jsonl"
    rows = [{"q": r.prompt, "a": r.response.split("\nQuestion:")[0]} for r in TAUGHT]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_eval_of_a_data_file_writes_a_valid_report(checkpoint, taught_file, tmp_path):
    out = tmp_path / "report.json"
    result = runner.invoke(app, [
        "eval", str(checkpoint), "--data", str(taught_file), "--prompt-field", "q", "--response-field", "a", "--split", "all",
        "--seq-len", "32", "--max-tokens", "64", "--gsm8k-limit", "3", "--max-new-tokens", "48", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    report = EvalReport.model_validate_json(out.read_text())
    assert report.data == str(taught_file) and report.split == "all" and report.records == 3
    assert report.gsm8k.accuracy == 1.0
    assert len(report.model_fingerprint) == 64
    assert f"{report.domain_loss:.4f}" in result.stdout and "3/3" in result.stdout


def test_eval_of_the_maths_corpus_scores_gsm8k_by_default(checkpoint, tmp_path):
    out = tmp_path / "report.json"
    result = runner.invoke(app, [
        "eval", str(checkpoint), "--seq-len", "32", "--max-tokens", "256", "--gsm8k-limit", "2",
        "--max-new-tokens", "8", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    report = EvalReport.model_validate_json(out.read_text())
    assert report.data == "math" and report.split == "test" and report.records == 1319 and report.gsm8k.total == 2
    assert report.general_tokens == 8 * 31


@pytest.mark.slow
def test_eval_of_the_small_testbed(small_testbed, tmp_path):
    _, directory = small_testbed
    out = tmp_path / "report.json"
    result = runner.invoke(app, [
        "eval", str(directory), "--seq-len", "64", "--max-tokens", "1024", "--gsm8k-limit", "4",
        "--max-new-tokens", "16", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    report = EvalReport.model_validate_json(out.read_text())
    assert report.gsm8k.total == 4 and report.general_tokens == 16 * 63


def test_missing_model_directory_is_named(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "absent"), "--data", "wikitext"])
    assert result.exit_code == 1
    assert "absent: no such model directory" in result.stderr


def test_unknown_data_name_is_named(checkpoint):
    result = runner.invoke(app, ["eval", str(checkpoint), "--data", "maths"])
    assert result.exit_code == 1
    assert "--data 'maths': neither a vendored corpus" in result.stderr


def test_field_flags_with_a_corpus_name_are_refused(checkpoint):
    result = runner.invoke(app, ["eval", str(checkpoint), "--data", "math", "--prompt-field", "q"])
    assert result.exit_code == 1
    assert "--prompt-field apply to data files" in result.stderr


def test_bad_options_are_all_named(checkpoint):
    result = runner.invoke(app, ["eval", str(checkpoint), "--batch-size", "0", "--gsm8k-limit", "-1"])
    assert result.exit_code == 1
    assert "--batch-size 0: Input should be greater" in result.stderr and "--gsm8k-limit" in result.stderr
    result = runner.invoke(app, ["eval", str(checkpoint), "--seq-len", "512", "--max-tokens", "100"])
    assert result.exit_code == 1
    assert "--max-tokens=100 is below --seq-len=512" in result.stderr


def test_a_file_without_the_named_field_is_named(checkpoint, taught_file):
    result = runner.invoke(app, ["eval", str(checkpoint), "--data", str(taught_file), "--text-field", "body"])
    assert result.exit_code == 1
    assert "taught.jsonl:1" in result.stderr
