"""Smoke test of bench/attacks.py: one trial, every attack class that does no work refused, nothing merged or paid to it, the
minimal-effort miner paid at most its measured share, JSON written."""

import importlib.util
import json
from pathlib import Path

import pytest

from tests.bench.test_results_match_scripts import assert_committed_keys

pytestmark = pytest.mark.slow

BENCH = Path(__file__).parents[2] / "bench" / "attacks.py"


def test_one_quick_trial_merges_and_pays_no_adversary_and_writes_the_json(tmp_path, small_testbed):
    spec = importlib.util.spec_from_file_location("bench_attacks", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "attacks.json"
    argv = ["--quick", "--out", str(out), "--testbed", str(small_testbed[1])]  # one trial, no fault trials
    bench.main(argv)
    assert_committed_keys("attacks", out, argv)  # the run test_results_match_scripts leaves to this test
    result = json.loads(out.read_text())
    assert set(result["attacks"]) >= {"nan", "copy_noise", "replay", "sybil", "pickle", bench.WRONG_STATE}
    for name, row in result["attacks"].items():
        assert row["trials"] == 1 and row["submissions"] >= 1, name
        if name != "minimal_effort":  # it does some real work, and is paid for what it adds
            assert row["merged"] == 0 and row["rewarded"] == 0, (name, row)
    lazy = result["attacks"]["minimal_effort"]
    assert lazy["share_le_fair_share_every_round"] and lazy["share"] <= lazy["fair_share"] + 1e-12
    assert 0.99 <= result["honest_reward_share"] <= 1.0
    assert result["attacks"][bench.WRONG_STATE]["flagged"] == 1
    assert result["check_cost"]["check_s_per_submission"] > 0 and result["fault_trials"] is None
    tradeoff = result["evidence_tradeoff"]  # honest evidence was computed, and a stricter level fails no fewer of it
    assert tradeoff["counts"]["honest"] >= 1 and 0 <= tradeoff["honest_p_max"] <= 1
    failing = [row["honest_failing"] for row in tradeoff["levels"].values()]
    assert failing == sorted(failing) and all(0 <= f <= 1 for f in failing)
