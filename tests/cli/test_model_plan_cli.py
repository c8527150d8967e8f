import json

import pytest
from typer.testing import CliRunner

from moeforge.cli.main import app
from moeforge.extract.package import MODES
from moeforge.extract.plan import plan_device
from moeforge.model.shipped import shipped_config

runner = CliRunner()


def test_plan_of_one_mode_prints_its_exact_total_and_host_bytes():
    result = runner.invoke(app, ["model", "plan", "deepseek-v2-lite", "--mode", "offload", "--part", "4"])
    assert result.exit_code == 0, result.output
    plan = plan_device(shipped_config("deepseek-v2-lite"), "offload", parts=4)
    assert f"{plan.total:,}" in result.output
    assert f"{plan.routed_experts:,}" in result.output
    assert f"host memory holds the routed experts: {plan.host_experts / 2**30:.2f} GiB" in " ".join(result.output.split())


def test_plan_without_a_mode_prints_one_row_per_mode():
    result = runner.invoke(app, ["model", "plan", "deepseek-v2-lite"])
    assert result.exit_code == 0, result.output
    rows = [line.split()[0] for line in result.output.splitlines() if line.split() and line.split()[0] in MODES]
    assert rows == list(MODES)


def test_plan_json_holds_the_library_plans_and_names_unavailable_modes():
    result = runner.invoke(app, ["model", "plan", "deepseek-v3", "--parts", "8", "--seq", "512", "--no-checkpointing", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [p["mode"] for p in out["plans"]] == ["full", "quantized", "offload"]
    assert "subset" in out["unavailable"]
    expected = plan_device(shipped_config("deepseek-v3"), "offload", parts=8, seq=512, checkpointing=False)
    assert out["plans"][-1] == json.loads(json.dumps(expected.to_json()))


@pytest.mark.parametrize("args, named", [
    (["no-such-model"], "no-such-model"),
    (["deepseek-v2-lite", "--mode", "sparse"], "--mode"),
    (["deepseek-v2-lite", "--parts", "0"], "--parts"),
    (["deepseek-v2-lite", "--batch", "0"], "--batch"),
    (["deepseek-v2-lite", "--seq", "0"], "--seq"),
    (["deepseek-v2-lite", "--parts", "1000"], "--parts"),
    (["deepseek-v2-lite", "--trainable-per-layer", "65"], "--trainable-per-layer"),
    (["deepseek-v3", "--mode", "subset"], "deepseek_v3"),
])
def test_plan_refuses_bad_input_naming_it(args, named):
    result = runner.invoke(app, ["model", "plan", *args])
    assert result.exit_code == 1
    assert named in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # one red line (rich may wrap a long one)
