"""Benchmark: the testbed's forward and training throughput on this machine, and exact sizes of real MoEs.

Builds (or reuses) the default testbed, times forward passes and full training steps on its
own data shape, sizes every shipped real config on the meta device, prints a table and writes
bench/results/testbed.json.

    .venv/bin/python bench/testbed.py [--preset default] [--reps 5]
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from moeforge.model.load import load_model
from moeforge.model.shipped import SHIPPED_CONFIGS, shipped_config
from moeforge.model.sizing import size_of_config
from moeforge.testbed.build import build_testbed
from moeforge.testbed.config import preset

RESULTS = Path(__file__).parent / "results" / "testbed.json"


def _throughput(model, cfg, reps: int, train: bool) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (cfg.batch_size, cfg.seq_len), generator=g)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5) if train else None
    model.train(train)
    times = []
    for rep in range(reps + 1):  # the first rep warms up and is not counted
        start = time.perf_counter()
        if train:
            model(input_ids=x, labels=x).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(input_ids=x)
        if rep:
            times.append(time.perf_counter() - start)
    model.eval()
    return x.numel() / (sum(times) / len(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="testbed directory (default: the moeforge cache)")
    args = parser.parse_args()

    cfg = preset(args.preset)
    home = Path(os.environ.get("MOEFORGE_HOME") or Path.home() / ".cache" / "moeforge")
    out = args.out or home / "testbed" / f"{args.preset}-{cfg.key()}"
    report = build_testbed(cfg, out)
    model = load_model(out)
    forward = _throughput(model, cfg, args.reps, train=False)
    train = _throughput(model, cfg, args.reps, train=True)
    params = {"testbed": report.params}
    params.update({name: size_of_config(shipped_config(name)).total_params for name in SHIPPED_CONFIGS})

    result = {
        "preset": args.preset,
        "forward_tokens_per_s": round(forward, 1),
        "train_tokens_per_s": round(train, 1),
        "batch": [cfg.batch_size, cfg.seq_len],
        "vocab_size": report.vocab_size,
        "ln_vocab": round(report.ln_vocab, 4),
        "domain_losses": report.domain_losses,
        "build_train_seconds": report.train_seconds,
        "params": params,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "versions": report.versions,
    }
    print(f"testbed forward  {forward:10,.0f} tokens/s  (batch {cfg.batch_size}×{cfg.seq_len}, {torch.get_num_threads()} threads)")
    print(f"testbed training {train:10,.0f} tokens/s  (forward + backward + AdamW, all parameters)")
    print(f"vocab {report.vocab_size}, ln(vocab) {report.ln_vocab:.3f}")
    for domain, loss in report.domain_losses.items():
        print(f"  held-out loss {domain:9s} {loss:.3f}")
    for name, count in params.items():
        print(f"  {name:20s} {count:>18,} parameters")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
