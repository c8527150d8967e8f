"""Benchmark: the ESFT pilot on the testbed, with GSM8K as the maths job.

Profiles the domain, selects experts (ESFT-Token p=0.2, ESFT-Gate p=0.1, and a random control
of the same size), trains each method on the same data and token budget (plus full
fine-tuning and LoRA), and measures domain held-out loss and general perplexity before and
after, trainable share, training speed and peak memory. Then builds the three miner memory
modes, reports their bytes (exact on the testbed, computed for DeepSeek-V2-Lite) and fidelity.
Prints a table and writes bench/results/esft_pilot.json.

Each method is also held to the network's general-drift budget (2% perplexity on the first 32
rows of WikiText-2 validation, the network guard's rows; WikiText-2 test reports): its run is
evaluated at `--checkpoints` points, and its `constrained` entry is the best checkpoint on the
validation split (GSM8K train records held out from training) whose general loss fits the
budget, at the learning rate a line search on that same objective picked (doubling or halving
from the method's default until the best value is interior) for the methods `--search` names, at
the default learning rate for the others (`lr_searched` says which). The unconstrained rows are the
final states at the default learning rates, as before. A PNG (`--plot`) shows each method's
domain gain against its drift along its checkpoints, at the picked learning rate.

    .venv/bin/python bench/esft_pilot.py [--preset default] [--train-tokens 300000] [--quick]
"""

import argparse
import sys
import time
from pathlib import Path


from moeforge.data.corpora import load_corpus
from moeforge.data.formatting import encode_records
from moeforge.data.packing import pack_examples
import math

from moeforge.eval.domain import domain_loss, rows_loss
from moeforge.eval.general import general_perplexity, general_reference_rows
from moeforge.network.owner import JobRequest
from moeforge.extract.package import MODES, held_bytes, plan_memory, reduce_for_mode, slice_bytes
from moeforge.model.fingerprint import model_fingerprint
from moeforge.model.load import load_model
from moeforge.model.shipped import shipped_config
from moeforge.model.sizing import size_of_model
from moeforge.model.slices import apply_slice, remove_delta
from moeforge.profile.selection import SelectConfig, coverage_selection, random_selection, select_experts
from moeforge.profile.stats import ProfileConfig, profile_records
from moeforge.train.config import TrainConfig
from moeforge.train.esft import train_experts

from line_search import doubling, halving, line_search
from base import testbed_base
from provenance import Run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: harness/ sits beside bench/
from harness.overhead import profiling_overhead
from harness.baselines import train_full, train_lora

RESULTS = Path(__file__).parent / "results" / "esft_pilot.json"
QUICK = {"preset": "small", "profile_tokens": 4096, "train_tokens": 8192, "eval_tokens": 2048, "batch_size": 4, "checkpoints": 2,
         "val_records": 32}
PLOT = Path(__file__).parent / "results" / "esft_pilot_tradeoff.png"


def main(argv: list[str] | None = None) -> dict:
    run = Run(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--out", type=Path, default=None, help="testbed directory (default: the moeforge cache)")
    parser.add_argument("--profile-tokens", type=int, default=131_072)
    parser.add_argument("--train-tokens", type=int, default=300_000)
    parser.add_argument("--eval-tokens", type=int, default=32_768)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--esft-lr", type=float, default=1e-3)
    parser.add_argument("--fft-lr", type=float, default=1e-4)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT, help="the gain-against-drift PNG")
    parser.add_argument("--checkpoints", type=int, default=8, help="evaluations along each run, for early stopping")
    parser.add_argument("--search", default="esft_token,esft_gate,random,fft,lora",
                        help="methods whose lr is line-searched for the constrained entry (the others: early stopping at the default lr)")
    parser.add_argument("--val-records", type=int, default=200, help="GSM8K train records held out as the validation split")
    parser.add_argument("--quick", action="store_true", help=f"a tiny configuration for a smoke run: {QUICK}")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)

    testbed = testbed_base(args.preset, args.out)
    base_dir, base, tokenizer = testbed.folder, testbed.model, testbed.tokenizer
    fingerprint = model_fingerprint(base)
    seq_len = testbed.seq_len
    train_records, test_records = load_corpus("math", "train"), load_corpus("math", "test")

    train_records, val_records = train_records[: -args.val_records], train_records[-args.val_records:]
    val = pack_examples(encode_records(val_records, tokenizer), seq_len, tokenizer.pad_token_id)
    guard_ids, guard_labels = general_reference_rows(tokenizer, seq_len=seq_len, rows=JobRequest.model_fields["general_rows"].default)
    budget = JobRequest.model_fields["general_budget"].default

    def evaluate(model) -> dict:
        d = domain_loss(model, tokenizer, test_records, seq_len=seq_len, max_tokens=args.eval_tokens)
        g = general_perplexity(model, tokenizer, seq_len=seq_len, max_tokens=args.eval_tokens)
        return {"domain_loss": d.loss, "general_ppl": g.perplexity}

    def evaluate_checkpoint(model) -> dict:
        training = model.training
        try:
            return {**evaluate(model), "validation_loss": rows_loss(model, val.input_ids, val.labels, batch_size=8).loss,
                    "general_val_loss": rows_loss(model, guard_ids, guard_labels, batch_size=8).loss}
        finally:
            model.train(training)

    # 1. profile and select
    started = time.perf_counter()
    profile = profile_records(base, tokenizer, train_records, ProfileConfig(tokens=args.profile_tokens, seq_len=seq_len),
                              base_fingerprint=fingerprint)
    profile_seconds = time.perf_counter() - started
    selections = {
        "esft_token": select_experts(profile, SelectConfig(score="token")),
        "esft_gate": select_experts(profile, SelectConfig(score="gate")),
    }
    selections["random"] = random_selection(selections["esft_token"], seed=0)
    coverage = coverage_selection(profile, share=args.coverage)
    packed = pack_examples(encode_records(train_records, tokenizer), seq_len, tokenizer.pad_token_id)
    overhead = profiling_overhead(base, packed.input_ids[: max(1, args.eval_tokens // seq_len)], batch_size=8)

    # 2. methods, same data and token budget
    before = evaluate(base)
    total_params = size_of_model(base).total_params

    def train_cfg(lr: float) -> TrainConfig:
        return TrainConfig(lr=lr, tokens=args.train_tokens, batch_size=args.batch_size, warmup_steps=5,
                           weight_decay=0.0, checkpoint_every=0, seed=0)

    general_val_base = rows_loss(base, guard_ids, guard_labels, batch_size=8).loss

    def run_method(name: str, lr: float) -> dict:
        """One training run of `name` at `lr`, evaluated along the way: (result, curve of checkpoints, delta or None)."""
        cfg = train_cfg(lr)
        curve: list[dict] = []

        def on_step(model):
            def callback(info):
                if info.step % max(1, info.steps // args.checkpoints) == 0 or info.step == info.steps:
                    curve.append({"step": info.step, **evaluate_checkpoint(model)})
            return callback

        delta = None
        if name in selections:
            delta, result = train_experts(base, selections[name].slots(), packed, cfg, base_fingerprint=fingerprint,
                                          on_step=on_step(base))
        elif name == "fft":
            model = load_model(base_dir)
            result = train_full(model, packed, cfg, on_step=on_step(model))
            del model
        else:
            model = load_model(base_dir)
            _, result = train_lora(model, packed, cfg, rank=8, target_experts=True, on_step=on_step(model))
            del model
        fits = [c for c in curve if c["general_val_loss"] <= general_val_base + math.log1p(budget)]
        best = min(fits, key=lambda c: c["validation_loss"]) if fits else None
        return {"lr": lr, "result": result, "curve": curve, "delta": delta, "constrained": best,
                "loss": best["validation_loss"] if best else math.inf}

    default_lr = {"esft_token": args.esft_lr, "esft_gate": args.esft_lr, "random": args.esft_lr, "fft": args.fft_lr, "lora": args.lora_lr}
    methods, deltas, tradeoff = {}, {}, {}
    for name, lr in default_lr.items():
        cache: dict[float, dict] = {}

        def trial(x: float, name=name, cache=cache) -> dict:
            if x not in cache:
                print(f"{name}: lr {x:g}", flush=True)
                cache[x] = run_method(name, x)
            return cache[x]

        first = trial(lr)
        if name in selections:
            deltas[name] = first["delta"]
        # the unconstrained row: the final state at the default learning rate, as before (the curve's last checkpoint)
        final = first["curve"][-1]
        methods[name] = _row(before, final, first["result"], total_params,
                             experts=len(selections[name].slots()) if name in selections else None)
        best = line_search(trial, lr, doubling, halving, value="lr") if not args.quick and name in args.search.split(",") else first
        c = best["constrained"]
        methods[name]["constrained"] = None if c is None else {
            "lr": best["lr"], "step": c["step"], "steps": best["curve"][-1]["step"], "validation_loss": c["validation_loss"],
            "domain_loss_after": c["domain_loss"], "general_ppl_after": c["general_ppl"],
            "general_ppl_drift": c["general_ppl"] / before["general_ppl"] - 1,
            "general_val_drift": math.exp(c["general_val_loss"] - general_val_base) - 1,
            "lrs_tried": sorted(cache), "lr_searched": name in args.search.split(",") and not args.quick}
        tradeoff[name] = [{"step": p["step"], "domain_gain": before["domain_loss"] - p["domain_loss"],
                           "general_ppl_drift": p["general_ppl"] / before["general_ppl"] - 1} for p in best["curve"]]

    # 3. miner memory modes, training the ESFT-Token experts
    slots = selections["esft_token"].slots()
    kept = {layer: list(ids) for layer, ids in coverage.experts.items()}
    n_layers = len(profile.layers)
    per_layer_trained = len(slots) / n_layers / profile.num_experts
    per_layer_kept = sum(len(ids) for ids in kept.values()) / n_layers / profile.num_experts
    v2 = shipped_config("deepseek-v2-lite")
    v2_experts = v2.n_routed_experts
    full_after = methods["esft_token"]["domain_loss_after"]
    memory_modes = {}
    for mode in MODES:
        miner = load_model(base_dir)
        reduce_for_mode(miner, mode, slots, kept)
        held = held_bytes(miner) + slice_bytes(base, slots)
        miner_loss = evaluate(miner)["domain_loss"]
        if mode == "full":
            after = full_after
        else:
            delta, _ = train_experts(miner, slots, packed, train_cfg(args.esft_lr), base_fingerprint=fingerprint)
            apply_slice(base, delta)
            after = evaluate(base)["domain_loss"]
            remove_delta(base, delta)
        plan = plan_memory(v2, mode, trainable_per_layer=max(1, round(per_layer_trained * v2_experts)),
                           kept_per_layer=max(v2.num_experts_per_tok, round(per_layer_kept * v2_experts)))
        memory_modes[mode] = {
            "bytes_held_testbed": held,
            "fraction_of_full_testbed": held / (held_bytes(base) + slice_bytes(base, slots)),
            "bytes_held_v2_lite": plan.bytes_held,
            "fraction_of_full_v2_lite": plan.fraction_of_full,
            "miner_domain_loss": miner_loss,
            "miner_domain_loss_gap": miner_loss - before["domain_loss"],
            "domain_loss_after": after,
            "domain_loss_gap": after - full_after,
        }
        del miner

    fft_gain = methods["fft"]["domain_loss_before"] - methods["fft"]["domain_loss_after"]
    result = {
        "preset": args.preset,
        "train_tokens": args.train_tokens,
        "profile_tokens": profile.tokens,
        "profile_seconds": round(profile_seconds, 2),
        "profiling_overhead": overhead["ratio"],
        "profiling_overhead_with_saliency": overhead["ratio_saliency"],
        "selected_experts": {k: v.count for k, v in selections.items()},
        "coverage_experts": coverage.count,
        "methods": methods,
        "esft_token_share_of_fft_gain": (methods["esft_token"]["domain_loss_before"] - methods["esft_token"]["domain_loss_after"]) / fft_gain,
        "esft_gate_share_of_fft_gain": (methods["esft_gate"]["domain_loss_before"] - methods["esft_gate"]["domain_loss_after"]) / fft_gain,
        "memory_modes": memory_modes,
        "learning_rates": {"esft": args.esft_lr, "fft": args.fft_lr, "lora": args.lora_lr},
        "general_budget": {"budget": budget, "reference": "WikiText-2 validation, the network guard's rows",
                           "validation": f"the last {args.val_records} GSM8K train records, held out from training"},
        "constrained_esft_token_vs_fft": _constrained_gap(methods),
        "tradeoff": tradeoff,
        "tradeoff_plot": _plot(tradeoff, args.plot),
    }
    _print(result)
    return run.write(args.results, result)


def _constrained_gap(methods: dict) -> dict | None:
    """ESFT-Token's constrained domain gain against full fine-tuning's (the issue's target: at least equal)."""
    token, fft = methods["esft_token"].get("constrained"), methods["fft"].get("constrained")
    if token is None or fft is None:
        return None
    before = methods["esft_token"]["domain_loss_before"]
    gain_token, gain_fft = before - token["domain_loss_after"], before - fft["domain_loss_after"]
    return {"esft_token_gain": gain_token, "fft_gain": gain_fft, "met": bool(gain_token >= gain_fft)}


def _plot(tradeoff: dict, path: Path) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, points in tradeoff.items():
        axes.plot([100 * p["general_ppl_drift"] for p in points], [p["domain_gain"] for p in points], marker="o", label=name)
    axes.axvline(2.0, color="grey", linestyle="--", linewidth=1)
    axes.set_xlabel("WikiText-2 test perplexity drift (%)")
    axes.set_ylabel("GSM8K test loss gain (nats)")
    axes.set_title("domain gain against general drift along each run (picked lr)")
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return str(path.name)


def _row(before: dict, after: dict, result, total_params: int, experts: int | None = None) -> dict:
    row = {
        "domain_loss_before": before["domain_loss"],
        "domain_loss_after": after["domain_loss"],
        "general_ppl_before": before["general_ppl"],
        "general_ppl_after": after["general_ppl"],
        "general_ppl_drift": after["general_ppl"] / before["general_ppl"] - 1,
        "trainable_params": result.trainable_params,
        "trainable_params_frac": result.trainable_params / total_params,
        "train_tokens_per_s": result.tokens_per_s,
        "train_seconds": result.seconds,
        "peak_mem_bytes": result.peak_mem_bytes,
    }
    if experts is not None:
        row["experts"] = experts
    return row


def _print(r: dict) -> None:
    print(f"within the {100 * r['general_budget']['budget']:g}% general budget (early stopping on validation, lr searched):")
    for name, m in r["methods"].items():
        c = m.get("constrained")
        print(f"  {name:11s} " + ("no checkpoint within the budget" if c is None else
              f"lr {c['lr']:g} step {c['step']}/{c['steps']}: domain loss {c['domain_loss_after']:.3f}, "
              f"general ppl {c['general_ppl_after']:.2f} ({100 * c['general_ppl_drift']:+.2f}%)"))
    print(f"profiling: {r['profile_tokens']:,} tokens in {r['profile_seconds']:.1f} s; overhead ×{r['profiling_overhead']:.3f} "
          f"(×{r['profiling_overhead_with_saliency']:.3f} with REAP saliency)")
    print(f"{'method':11s} {'domain loss':>17s} {'general ppl':>19s} {'drift':>7s} {'trained':>8s} {'tok/s':>8s} {'peak MB':>8s}")
    for name, m in r["methods"].items():
        print(f"{name:11s} {m['domain_loss_before']:7.3f} → {m['domain_loss_after']:6.3f} "
              f"{m['general_ppl_before']:8.2f} → {m['general_ppl_after']:7.2f} {100 * m['general_ppl_drift']:+6.2f}% "
              f"{100 * m['trainable_params_frac']:7.2f}% {m['train_tokens_per_s']:8,.0f} {m['peak_mem_bytes'] / 2**20:8.1f}")
    print(f"ESFT-Token reaches {100 * r['esft_token_share_of_fft_gain']:.1f}% of full fine-tuning's domain-loss gain; "
          f"ESFT-Gate {100 * r['esft_gate_share_of_fft_gain']:.1f}%")
    print(f"{'mode':10s} {'testbed bytes':>14s} {'V2-Lite GB':>11s} {'of full':>8s} {'miner loss gap':>15s} {'trained-in-mode gap':>20s}")
    for mode, m in r["memory_modes"].items():
        print(f"{mode:10s} {m['bytes_held_testbed']:14,} {m['bytes_held_v2_lite'] / 1e9:11.2f} "
              f"{100 * m['fraction_of_full_v2_lite']:7.1f}% {m['miner_domain_loss_gap']:+15.4f} {m['domain_loss_gap']:+20.4f}")


if __name__ == "__main__":
    main()
