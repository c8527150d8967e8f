"""A GPU check you can run in minutes: the `gpu`-marked tests, then measured device memory against the plan.

On a CUDA machine:

1. runs `pytest -m gpu` (the tests that need CUDA);
2. builds a DeepSeek-V2-Lite-shaped model from its shipped config with **random weights** (for memory
   and speed only: no quality figure comes from it), and for each mode and part count trains one
   part for two steps of batch × seq tokens (bf16 autocast, activation checkpointing), reporting
   `torch.cuda.max_memory_allocated` over the steps against `moeforge model plan`'s bytes for the
   same setting, and the second step's tokens/s;
3. writes the figures into `bench/results/miner_memory.json` under `gpu` (model → mode → part count),
   with this run's command, commit and machine.

Without CUDA it says so and exits 0, writing nothing.

    .venv/bin/python bench/gpu_check.py [--model deepseek-v2-lite] [--seq 2048] [--skip-tests]
"""

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
from provenance import REPO, Run

from moeforge.extract.package import reduce_for_mode
from moeforge.extract.plan import ESFT_SHARE, plan_device
from moeforge.model.experts import ExpertSlot
from moeforge.model.families import moe_layers
from moeforge.model.shipped import shipped_config
from moeforge.data.packing import Packed
from moeforge.train.config import TrainConfig
from moeforge.train.esft import train_experts

RESULTS = Path(__file__).parent / "results" / "miner_memory.json"
RUNS = (("full", 1), ("full", 4), ("offload", 1), ("offload", 4))  # (mode, parts): one model build per mode


def main(argv: list[str] | None = None) -> int:
    run = Run(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deepseek-v2-lite", help="a shipped config")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--skip-tests", action="store_true", help="do not run the gpu-marked tests first")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA on this machine: nothing to measure; bench/results/miner_memory.json keeps its gpu figures as they are.")
        return 0
    tests = None
    if not args.skip_tests:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n0", "-m", "gpu", "tests"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        tests = {"returncode": proc.returncode, "summary": (proc.stdout.strip().splitlines() or [""])[-1],
                 "seconds": round(time.perf_counter() - started, 1)}
        print(f"gpu tests: {tests['summary']} (exit {proc.returncode})", flush=True)
    figures = measure(shipped_config(args.model), RUNS, device=torch.device("cuda"), batch=args.batch, seq=args.seq)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    provenance = run.provenance()
    result["gpu"] = {args.model: figures, "tests": tests, "setting": {"batch": args.batch, "seq": args.seq, "checkpointing": True,
                                                                      "weights": "random (memory and speed only)"},
                     **{f"gpu_{k}": v for k, v in provenance.items()}}
    result["gpu_note"] = f"measured by {provenance['command']} on {torch.cuda.get_device_name(0)}"
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote the gpu figures into {args.out}")
    return 0


def measure(config, runs, *, device: torch.device, batch: int, seq: int) -> dict:
    """mode → str(parts) → {measured_peak_bytes, planned_bytes, peak_vs_plan, tokens_per_s} for `config` with random weights."""
    from transformers import AutoModelForCausalLM

    out: dict[str, dict] = {}
    for mode in dict.fromkeys(m for m, _ in runs):
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
        layers = moe_layers(model)
        per_layer = max(1, round(ESFT_SHARE * layers[0].num_experts))
        slots = [ExpertSlot(l.index, e) for l in layers for e in range(per_layer)]
        del layers  # they hold the experts modules: offload frees the device copies only once nothing refers to them
        reduce_for_mode(model, mode, slots)  # offload: the experts move to (pinned) host memory, the device copies are freed
        model.to(device)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
        packed = Packed(input_ids=ids, labels=ids.clone(), n_tokens=ids.numel(), n_loss_tokens=ids.numel())
        for m, parts in runs:
            if m != mode:
                continue
            part = slots[: math.ceil(len(slots) / parts)]  # the largest part of a balanced split, as the plan counts it
            plan = plan_device(config, mode, parts=parts, trainable_per_layer=per_layer, batch=batch, seq=seq, checkpointing=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            cfg = TrainConfig(lr=1e-4, steps=2, batch_size=batch, warmup_steps=0, checkpoint_every=0, bf16="auto",
                              activation_checkpointing=True)
            _, result = train_experts(model, part, packed, cfg, base_fingerprint="random-weights")
            peak = result.peak_mem_bytes
            out.setdefault(mode, {})[str(parts)] = {
                "measured_peak_bytes": peak, "planned_bytes": plan.total, "peak_vs_plan": peak / plan.total,
                "tokens_per_s": result.history[-1].tokens_per_s, "part_experts": len(part), "memory_method": result.memory_method,
            }
            print(f"{mode:8s} {parts} part(s): peak {peak / 2**30:.2f} GiB, plan {plan.total / 2**30:.2f} GiB "
                  f"({peak / plan.total:.2f}×), {result.history[-1].tokens_per_s:.0f} tok/s", flush=True)
        del model
    return out


if __name__ == "__main__":
    sys.exit(main())
