"""Right-sized deployment: what each K costs in bytes and loss, and how fast the local server serves.

Issue 12's benchmark; DESIGN.md "Deployment". On the testbed:

1. The GSM8K library entry: centralised ESFT (profile → ESFT-Token → train) on GSM8K train.
2. Export: the fine-tuned model (base + the entry's experts) profiled on GSM8K train; for K from every
   expert down to top-k, the export's weight bytes, held-out GSM8K test loss and WikiText-2 perplexity of
   the standard (approximate, calibrated) checkpoint and of moeforge's exact routing, against the unpruned
   fine-tuned model; the K the exporter picks at its default coverage (0.9).
   The default is `moeforge export`'s: the coverage's K, then lower while the served model's loss on calibration
   rows (GSM8K train, never the reported test rows) stays within the gap budget (1%).
3. Serving, at that K: tokens/s and time to first token for 1, 4 and 16 concurrent streaming clients,
   moeforge's server against `transformers serve` on the same export, same machine, same run.
4. DeepSeek-V2-Lite's byte plan from its shipped config on the meta device, with the testbed's kept
   share of experts (no V2-Lite routing profile ships with moeforge, so its own 90%-coverage K is not
   known here; the figure is labelled as that share).

    .venv/bin/python bench/deploy.py        # writes bench/results/deploy.json
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from args import parse_args
from base import testbed_base
from provenance import Run

from moeforge.data.corpora import load_corpus
from moeforge.data.formatting import encode_records
from moeforge.data.packing import pack_examples
from moeforge.data.splits import split_records
from moeforge.deploy.coverage import keep_experts
from moeforge.deploy.export import export_model
from moeforge.eval.domain import packed_rows
from moeforge.model.fingerprint import model_fingerprint
from moeforge.model.shipped import shipped_config
from moeforge.model.sizing import size_of_config
from moeforge.model.slices import apply_slice
from moeforge.profile.selection import select_experts
from moeforge.profile.stats import ProfileConfig, profile_records
from moeforge.train.config import TrainConfig
from moeforge.train.esft import train_experts

RESULTS = Path(__file__).parent / "results" / "deploy.json"
QUICK = {"preset": "small", "profile_tokens": 4096, "train_tokens": 8192, "eval_tokens": 2048, "clients": "1,2", "new_tokens": 8,
         "ks": 2, "lr": 1e-2}


def main(argv: list[str] | None = None) -> dict:
    run = Run(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--testbed", type=Path, default=None, help="testbed directory (default: the moeforge cache)")
    parser.add_argument("--profile-tokens", type=int, default=32_768)
    parser.add_argument("--train-tokens", type=int, default=200_000)
    parser.add_argument("--eval-tokens", type=int, default=16_384)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--gap-budget", type=float, default=0.01, help="the exporter's default: calibration-loss budget below the coverage's K")
    parser.add_argument("--ks", type=int, default=8, help="how many K values between all experts and top-k")
    parser.add_argument("--clients", default="1,4,16", help="concurrent streaming clients, comma-separated")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens each client asks for")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parse_args(parser, argv, QUICK)

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    testbed = testbed_base(args.preset, args.testbed)
    base_dir, model, tokenizer = testbed.folder, testbed.model, testbed.tokenizer
    fingerprint = model_fingerprint(model)
    seq_len = testbed.seq_len

    # 1. the GSM8K entry's experts, in place
    train = load_corpus("math", "train")
    profile = profile_records(model, tokenizer, train, ProfileConfig(tokens=args.profile_tokens, seq_len=seq_len, saliency=False),
                              base_fingerprint=fingerprint)
    slots = select_experts(profile).slots()
    packed = pack_examples(encode_records(train, tokenizer), seq_len, tokenizer.pad_token_id)
    delta, _ = train_experts(model, slots, packed, TrainConfig(lr=args.lr, tokens=args.train_tokens, batch_size=8, warmup_steps=5,
                                                               weight_decay=0.0, checkpoint_every=0, seed=0), base_fingerprint=fingerprint)
    apply_slice(model, delta)
    tuned = profile_records(model, tokenizer, train, ProfileConfig(tokens=args.profile_tokens, seq_len=seq_len, saliency=False),
                            base_fingerprint=fingerprint)
    rows = max(1, args.eval_tokens // seq_len) * seq_len
    calibration = packed_rows(tokenizer, split_records(train, "deploy-bench", validation=0.05, heldout=0.01).validation,
                              seq_len=seq_len, max_tokens=rows)
    evaluation = packed_rows(tokenizer, load_corpus("math", "test"), seq_len=seq_len, max_tokens=rows)
    experts, top_k = tuned.num_experts, tuned.top_k
    coverage_k = keep_experts(tuned, coverage=args.coverage).k

    with tempfile.TemporaryDirectory(prefix="moeforge-deploy-") as folder:
        default = export_model(model, tokenizer, tuned, Path(folder) / "default", calibration=calibration, evaluation=evaluation,
                               coverage=args.coverage, gap_budget=args.gap_budget or None, seq_len=seq_len,
                               general_tokens=args.eval_tokens, card={"domain": "math"})  # what `moeforge export` picks by default
        print(f"default export: coverage {args.coverage:g} gives K={coverage_k}; gap budget {args.gap_budget:g} on calibration rows "
              f"gives K={default.k}", flush=True)
        ks = sorted({experts, top_k, coverage_k, default.k,
                     *[round(experts - i * (experts - top_k) / max(1, args.ks - 1)) for i in range(args.ks)]}, reverse=True)
        per_k, unpruned = [], None
        for k in ks:
            report = export_model(model, tokenizer, tuned, Path(folder) / f"k{k}", calibration=calibration, evaluation=evaluation, k=k,
                                  seq_len=seq_len, general_tokens=args.eval_tokens, card={"domain": "math"})
            g = report.gaps
            unpruned = g.unpruned_domain_loss
            per_k.append({"k": k, "experts_kept": k, "share": k / experts, "bytes": report.bytes, "scale": report.scale,
                          "domain_loss_standard": g.standard_domain_loss, "domain_loss_exact": g.exact_domain_loss,
                          "general_ppl_standard": g.standard_general_ppl, "general_ppl_exact": g.exact_general_ppl,
                          "domain_gap_standard": g.gap("standard"), "domain_gap_exact": g.gap("exact")})
            print(f"K={k:3d}: {report.bytes:,} bytes · domain loss standard {g.standard_domain_loss:.4f} ({100 * g.gap('standard'):+.2f}%)"
                  + (f", exact {g.exact_domain_loss:.4f} ({100 * g.gap('exact'):+.2f}%)" if g.exact_domain_loss is not None else "")
                  + f" · unpruned {g.unpruned_domain_loss:.4f}", flush=True)
        serving = _serving(Path(folder) / "default", [int(c) for c in args.clients.split(",")], args.new_tokens)
        general_unpruned = g.unpruned_general_ppl

    lite = shipped_config("deepseek-v2-lite")
    lite_e = getattr(lite, "n_routed_experts")
    lite_k = max(lite.num_experts_per_tok, round(lite_e * default.k / experts))
    full_bytes = size_of_config(lite).total_bytes
    setattr(lite, "n_routed_experts", lite_k)
    lite_bytes = size_of_config(lite).total_bytes
    default_row = next(r for r in per_k if r["k"] == default.k)
    result = {
        "export": per_k, "default_k": default.k, "default_coverage": args.coverage, "coverage_k": coverage_k,
        "default_gap_budget": args.gap_budget, "experts_per_layer": experts, "top_k": top_k,
        "default_share": default.k / experts, "unpruned_domain_loss": unpruned, "unpruned_general_ppl": general_unpruned,
        "default_domain_gap_exact": default_row["domain_gap_exact"], "default_domain_gap_standard": default_row["domain_gap_standard"],
        "serving": serving,
        "v2_lite_bytes_at_default_coverage": lite_bytes, "v2_lite_k": lite_k, "v2_lite_full_bytes": full_bytes,
        "v2_lite_note": "K for DeepSeek-V2-Lite is the testbed's kept share of its 64 experts; no V2-Lite routing profile ships here",
        "targets": {"default_share": 0.5, "domain_gap_exact": 0.02, "throughput_ratio_at_16": 1.0},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    print(f"default K {default.k} of {experts} ({100 * default.k / experts:.0f}%): exact gap {_pct(default_row['domain_gap_exact'])}, "
          f"standard gap {_pct(default_row['domain_gap_standard'])}; DeepSeek-V2-Lite at K={lite_k}: {lite_bytes / 2**30:.2f} GiB "
          f"of {full_bytes / 2**30:.2f}")
    for c, s in serving.items():
        print(f"{c} clients: moeforge {s['moeforge_tokens_per_s']:.1f} tok/s (ttft {s['ttft_ms']:.0f} ms), transformers serve "
              f"{s['reference_tokens_per_s']:.1f} tok/s (ttft {s['reference_ttft_ms']:.0f} ms)")
    return run.write(args.out, result)


def _pct(x):
    return "n/a" if x is None else f"{100 * x:+.2f}%"


def _serving(export: Path, clients: list[int], new_tokens: int) -> dict:
    """Per concurrency, tokens/s and time to first token of both servers on the same export, each measured alone."""
    import uvicorn
    from openai import OpenAI

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from moeforge.cli.serve import build_app

    out = {}
    tmp = Path(tempfile.mkdtemp(prefix="moeforge-serve-bench-"))
    app, info = build_app(export, ["bench"], "exact", tmp / "ledger", tmp / "k.pem", 1024, new_tokens, 16, 64, "cpu")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    ours = OpenAI(base_url=f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1", api_key="bench", max_retries=0)
    mine = {c: _load(ours, info["name"], c, new_tokens) for c in clients}
    server.should_exit = True
    thread.join(timeout=30)
    app.state.engine.close()

    tserve = shutil.which("transformers", path=os.path.dirname(sys.executable))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([tserve, "serve", str(export), "--port", str(port), "--host", "127.0.0.1", "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        theirs = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 180
        while True:
            try:
                theirs.models.list()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        ref = {c: _load(theirs, str(export), c, new_tokens) for c in clients}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for c in clients:
        out[str(c)] = {"moeforge_tokens_per_s": mine[c]["tokens_per_s"], "reference_tokens_per_s": ref[c]["tokens_per_s"],
                       "ttft_ms": mine[c]["ttft_ms"], "reference_ttft_ms": ref[c]["ttft_ms"],
                       "ratio": mine[c]["tokens_per_s"] / ref[c]["tokens_per_s"] if ref[c]["tokens_per_s"] else None}
    return out


def _load(client, model: str, clients: int, new_tokens: int) -> dict:
    """`clients` concurrent streaming completions of `new_tokens` each: generated tokens per second over the whole run
    (chunks counted as tokens), and the mean time to first content chunk."""
    def one(i: int) -> tuple[int, float]:
        start, first, n = time.perf_counter(), None, 0
        stream = client.completions.create(model=model, prompt=f"Question: What is {i} plus {i + 1}?\nAnswer:", max_tokens=new_tokens,
                                           temperature=0, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                n += 1
                first = first if first is not None else time.perf_counter() - start
        return n, (first if first is not None else time.perf_counter() - start)

    one(0)  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    wall = time.perf_counter() - started
    return {"tokens_per_s": sum(n for n, _ in results) / wall, "ttft_ms": 1000 * sum(t for _, t in results) / len(results)}


if __name__ == "__main__":
    main()
