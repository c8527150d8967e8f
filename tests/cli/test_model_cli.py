from typer.testing import CliRunner

from moeforge.cli.main import app
from moeforge.model.shipped import shipped_config
from moeforge.model.sizing import size_of_config
from tests.model.tiny import tiny_model

runner = CliRunner()


def test_size_prints_the_exact_count_of_a_shipped_config():
    result = runner.invoke(app, ["model", "size", "deepseek-v2-lite"])
    assert result.exit_code == 0, result.output
    assert f"{size_of_config(shipped_config('deepseek-v2-lite')).total_params:,}" in result.output


def test_size_reads_a_config_json_file(tmp_path):
    model = tiny_model("qwen3_moe")
    model.config.save_pretrained(tmp_path)
    result = runner.invoke(app, ["model", "size", str(tmp_path / "config.json"), "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert f"{sum(p.numel() for p in model.parameters()):,}" in result.output


def test_size_refuses_bad_input():
    assert runner.invoke(app, ["model", "size", "no-such-model"]).exit_code == 1
    assert runner.invoke(app, ["model", "size", "deepseek-v2-lite", "--dtype", "int3"]).exit_code == 1


def test_inspect_lists_moe_layers(tmp_path):
    tiny_model("deepseek_v2").save_pretrained(tmp_path)
    result = runner.invoke(app, ["model", "inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "DeepseekV2TopkRouter" in result.output


def test_inspect_of_a_missing_model_exits_1(tmp_path):
    result = runner.invoke(app, ["model", "inspect", str(tmp_path / "absent")])
    assert result.exit_code == 1
    assert "absent" in result.stderr
