import torch

from tests.bench.conftest import load_bench
from tests.model.tiny import tiny_config


def test_without_cuda_it_says_so_exits_0_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "miner_memory.json"
    assert load_bench("gpu_check").main(["--out", str(out)]) == 0
    assert "no CUDA on this machine" in capsys.readouterr().out and not out.exists()


def test_the_measurement_runs_each_mode_and_part_against_its_plan_on_cpu():
    figures = load_bench("gpu_check").measure(tiny_config("deepseek_v2"), [("full", 1), ("full", 2), ("offload", 2)],
                                               device=torch.device("cpu"), batch=1, seq=16)
    assert set(figures) == {"full", "offload"} and set(figures["full"]) == {"1", "2"}
    for row in (figures["full"]["1"], figures["full"]["2"], figures["offload"]["2"]):
        assert row["measured_peak_bytes"] > 0 and row["planned_bytes"] > 0 and row["tokens_per_s"] > 0
    assert figures["full"]["2"]["part_experts"] < figures["full"]["1"]["part_experts"]
    assert figures["full"]["2"]["measured_peak_bytes"] < figures["full"]["1"]["measured_peak_bytes"]  # less trainable state
    assert figures["offload"]["2"]["measured_peak_bytes"] < figures["full"]["2"]["measured_peak_bytes"]  # experts off the device
