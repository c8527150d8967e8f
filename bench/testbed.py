"""Benchmark: the testbed's forward and training throughput on this machine, and exact sizes of real MoEs.

Builds (or reuses) the default testbed, times forward passes and full training steps on its
own data shape, sizes every shipped real config on the meta device, prints a table and writes
bench/results/testbed.json.

    .venv/bin/python bench/testbed.py [--preset default] [--reps 5] [--quick]

The build time it reports (`build_seconds`) is that of this run: a cached testbed is reused, so
for a fresh build figure run it with an empty $MOEFORGE_HOME or a new --out folder.
"""

import argparse
import os
import time
from pathlib import Path

import torch

from moeforge.model.load import load_model
from moeforge.model.shipped import SHIPPED_CONFIGS, shipped_config
from moeforge.model.sizing import size_of_config
from moeforge.testbed.build import build_testbed
from moeforge.testbed.config import preset

from provenance import Run

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


def main(argv: list[str] | None = None) -> dict:
    run = Run(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="testbed directory (default: the moeforge cache)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="the small preset, one timed repetition: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.reps = "small", 1

    cfg = preset(args.preset)
    home = Path(os.environ.get("MOEFORGE_HOME") or Path.home() / ".cache" / "moeforge")
    out = args.out or home / "testbed" / f"{args.preset}-{cfg.key()}"
    started = time.perf_counter()
    report = build_testbed(cfg, out)
    build_seconds = time.perf_counter() - started
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
        "build_train_tokens": report.train_tokens,
        "build_seconds": round(build_seconds, 1),  # this run's build_testbed call: ~0 when the testbed was cached
        "build_cached": build_seconds < report.train_seconds,
        "params": params,
        "versions": report.versions,
    }
    print(f"testbed forward  {forward:10,.0f} tokens/s  (batch {cfg.batch_size}×{cfg.seq_len}, {torch.get_num_threads()} threads)")
    print(f"testbed training {train:10,.0f} tokens/s  (forward + backward + AdamW, all parameters)")
    print(f"vocab {report.vocab_size}, ln(vocab) {report.ln_vocab:.3f}")
    for domain, loss in report.domain_losses.items():
        print(f"  held-out loss {domain:9s} {loss:.3f}")
    for name, count in params.items():
        print(f"  {name:20s} {count:>18,} parameters")
    return run.write(args.results, result)


if __name__ == "__main__":
    main()
