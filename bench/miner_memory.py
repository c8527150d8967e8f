"""Miners' device memory: plans for real base models, and the offload mode measured on the testbed.

Issue 15's benchmark; DESIGN.md "Miners' memory".

1. `plans`: model → mode → part count → the device bytes a miner must hold (`moeforge model plan`,
   computed on the meta device from each model's shipped config), at batch × seq tokens with
   activation checkpointing; `fraction_of_full` is of an unpartitioned full-mode miner; `fits_gb`
   the smallest common card (16/24/48/80 GB) it fits, or null.
2. `testbed`: the testbed's GSM8K experts (profile → ESFT-Token) trained in each mode, with and without
   activation checkpointing. `train_tokens_per_s`: the median step after two warm-up steps, the way a
   miner runs (the model's own experts implementation, default kernels). `domain_loss_gap`: the
   held-out GSM8K test loss after applying the mode's delta minus full mode's, both trained from the
   same rows with deterministic kernels (`torch.use_deterministic_algorithms`: the CPU grouped-matmul
   backward is not deterministic otherwise, so two full-mode runs differ in the last bits);
   `delta_equals_full` says whether the delta is full mode's bit for bit. Also tokens/s of full and
   offload mode with the eager expert loop instead of grouped matrix products, and offload with prefetch
   (on CPU a pure overhead, an extra copy: it reports the guesses' hits and misses).
3. `gpu`: what `bench/gpu_check.py` measured on a CUDA machine and wrote into this file (kept when this
   bench rewrites it), or null.

    .venv/bin/python bench/miner_memory.py        # writes bench/results/miner_memory.json
"""

import argparse
import os
import statistics
from pathlib import Path

from args import parse_args
from base import testbed_base
from provenance import Run

from moeforge.data.corpora import load_corpus
from moeforge.data.formatting import encode_records
from moeforge.data.packing import pack_examples
from moeforge.errors import ModelError
from moeforge.eval.domain import domain_loss
from moeforge.extract.offload import OffloadedExperts
from moeforge.extract.package import MODES, reduce_for_mode
from moeforge.extract.plan import plan_device
from moeforge.model.fingerprint import model_fingerprint
from moeforge.model.families import moe_layers
from moeforge.model.load import load_model
from moeforge.model.shipped import shipped_config
from moeforge.model.slices import apply_slice, remove_delta
from moeforge.profile.selection import select_experts
from moeforge.profile.stats import ProfileConfig, profile_records
from moeforge.train.config import TrainConfig
from moeforge.train.esft import train_experts

RESULTS = Path(__file__).parent / "results" / "miner_memory.json"
MODELS = ("deepseek-v2-lite", "deepseek-v3", "qwen3-30b-a3b", "mixtral-8x7b")
PARTS = (1, 2, 4, 8)
TESTBED_MODES = ("full", "offload", "quantized")  # subset needs a coverage profile: bench/esft_pilot.py measures it
QUICK = {"preset": "small", "profile_tokens": 4096, "steps": 4, "eval_tokens": 2048, "batch_size": 4, "loss_chunk": 64}


def main(argv: list[str] | None = None) -> dict:
    run = Run(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--testbed", type=Path, default=None, help="testbed directory (default: the moeforge cache)")
    parser.add_argument("--plan-batch", type=int, default=1, help="rows per micro-batch of the real models' plans")
    parser.add_argument("--plan-seq", type=int, default=2048, help="tokens per row of the real models' plans")
    parser.add_argument("--profile-tokens", type=int, default=32_768)
    parser.add_argument("--steps", type=int, default=24, help="training steps per testbed run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-tokens", type=int, default=16_384)
    parser.add_argument("--loss-chunk", type=int, default=256, help="positions per loss chunk in the lean runs and plans")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parse_args(parser, argv, QUICK)
    import torch

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    plans = {name: _plans(shipped_config(name), args.plan_batch, args.plan_seq) for name in MODELS}
    lean = {"optimizer": "adamw_8bit", "loss_chunk_tokens": args.loss_chunk}
    plans_lean = {name: _plans(shipped_config(name), args.plan_batch, args.plan_seq, **lean) for name in MODELS}
    for label, table in (("", plans), (f", adamw_8bit, loss in chunks of {args.loss_chunk}", plans_lean)):
        lite = table["deepseek-v2-lite"]["offload"]["4"]
        print(f"DeepSeek-V2-Lite, offload, 4 parts, {args.plan_batch}×{args.plan_seq}, checkpointing{label}: "
              f"{lite['device_bytes'] / 2**30:.2f} GiB = {lite['fraction_of_full']:.3f} of full mode as built "
              f"({lite['fraction_of_full_same_training']:.3f} like for like), fits {lite['fits_gb']} GB", flush=True)

    testbed = testbed_base(args.preset, args.testbed)
    model, tokenizer, seq_len = testbed.model, testbed.tokenizer, testbed.seq_len
    fingerprint = model_fingerprint(model)
    train = load_corpus("math", "train")
    profile = profile_records(model, tokenizer, train, ProfileConfig(tokens=args.profile_tokens, seq_len=seq_len, saliency=False),
                              base_fingerprint=fingerprint)
    slots = select_experts(profile).slots()
    packed = pack_examples(encode_records(train, tokenizer), seq_len, tokenizer.pad_token_id)
    test = load_corpus("math", "test")
    cfg = TrainConfig(lr=args.lr, steps=args.steps, batch_size=args.batch_size, warmup_steps=2, weight_decay=0.0,
                      checkpoint_every=0, seed=0)

    def trained(setting: dict):
        miner = load_model(testbed.folder)
        if setting.get("experts_implementation"):
            miner.config._experts_implementation = setting["experts_implementation"]
        reduce_for_mode(miner, setting["mode"], slots, prefetch=setting.get("prefetch", False))
        training = {k: setting[k] for k in ("activation_checkpointing", "optimizer", "loss_chunk_tokens") if k in setting}
        delta, result = train_experts(miner, slots, packed, cfg.model_copy(update=training), base_fingerprint=fingerprint)
        offloaded = [layer.experts for layer in moe_layers(miner) if isinstance(layer.experts, OffloadedExperts)]
        live = offloaded[0].meter.peak if offloaded else None  # the most expert bytes on the device at once
        if setting.get("prefetch"):
            p = offloaded[0].prefetcher
            setting["prefetch_hits"], setting["prefetch_misses"] = p.hits, p.misses
        return delta, statistics.median(h.tokens_per_s for h in result.history[2:] or result.history), live

    def loss_with(delta) -> float:
        apply_slice(model, delta)
        try:
            return domain_loss(model, tokenizer, test, seq_len=seq_len, max_tokens=args.eval_tokens).loss
        finally:
            remove_delta(model, delta)

    rows = {key: {**setting, "activation_checkpointing": setting.get("activation_checkpointing", False)}
            for key, setting in _settings(args.loss_chunk).items()}
    trained(rows["full"])  # a warm-up run, not reported: the first run in a process pays one-time costs
    for row in rows.values():
        _, row["train_tokens_per_s"], row["peak_working_set_bytes"] = trained(row)
    torch.use_deterministic_algorithms(True)
    try:
        deltas = {key: trained(row)[0] for key, row in rows.items() if not row.get("experts_implementation")}
    finally:
        torch.use_deterministic_algorithms(False)
    full_loss = loss_with(deltas["full"])
    reference = deltas["full"].state_dict()
    for key, delta in deltas.items():
        rows[key]["domain_loss"] = loss_with(delta)
        rows[key]["domain_loss_gap"] = rows[key]["domain_loss"] - full_loss
        rows[key]["delta_equals_full"] = all(t.equal(reference[k]) for k, t in delta.state_dict().items())
    for key, row in rows.items():
        like = "full+checkpointing" if row["activation_checkpointing"] else "full"
        row["tokens_per_s_vs_full"] = row["train_tokens_per_s"] / rows[like]["train_tokens_per_s"]
        print(f"{key:34s} {row['train_tokens_per_s']:9.0f} tok/s ({row['tokens_per_s_vs_full']:.2f}× {like})"
              + (f" · domain loss gap {row['domain_loss_gap']:+.2e}, delta {'=' if row['delta_equals_full'] else '≠'} full"
                 if "domain_loss_gap" in row else ""), flush=True)
    per_layer = max(sum(s.layer == layer for s in slots) for layer in {s.layer for s in slots})
    testbed_plans = {ahead: plan_device(model.config, "offload", trainable_per_layer=per_layer, batch=args.batch_size, seq=seq_len,
                                        dtype=model.dtype, prefetch=ahead) for ahead in (False, True)}
    result = {
        "plans": plans,
        "plans_lean": plans_lean,
        "plan_setting": {"batch": args.plan_batch, "seq": args.plan_seq, "checkpointing": True,
                         "plans_lean": lean, "fraction_of_full": "of full mode as built: unpartitioned, float32 AdamW, "
                                                                 "the whole loss at once",
                         "trainable_share": "a tenth of each layer's experts (ESFT-typical)", "parts": list(PARTS)},
        "testbed": rows,
        "testbed_setting": {"preset": args.preset, "slots": len(slots), "steps": args.steps, "batch_size": args.batch_size,
                            "seq_len": seq_len, "selection": "ESFT-Token on GSM8K train",
                            "planned_working_set_bytes": testbed_plans[False].routed_experts,
                            "planned_working_set_bytes_prefetch": testbed_plans[True].routed_experts},
        **_gpu_figures(args.out),
        "targets": {"v2_lite_offload_4_parts_fraction": 0.15, "offload_domain_loss_gap": 0.0, "offload_tokens_per_s_vs_full": 0.7,
                    "gpu_peak_within_plan": 0.10},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    return run.write(args.out, result)


def _settings(loss_chunk: int) -> dict[str, dict]:
    """The testbed runs: each mode with and without checkpointing, the eager expert loop, and offload's lean options."""
    out = {}
    for mode in TESTBED_MODES:
        out[mode] = {"mode": mode}
        out[f"{mode}+checkpointing"] = {"mode": mode, "activation_checkpointing": True}
    for mode in ("full", "offload"):
        out[f"{mode}+eager"] = {"mode": mode, "experts_implementation": "eager"}
    out["offload+prefetch"] = {"mode": "offload", "prefetch": True}
    lean = {"mode": "offload", "activation_checkpointing": True}
    out["offload+checkpointing+adamw_8bit"] = {**lean, "optimizer": "adamw_8bit"}
    out["offload+checkpointing+chunked_loss"] = {**lean, "loss_chunk_tokens": loss_chunk}
    out["offload+checkpointing+lean"] = {**lean, "optimizer": "adamw_8bit", "loss_chunk_tokens": loss_chunk}
    return out


def _gpu_figures(out: Path) -> dict:
    """The `gpu` figures `bench/gpu_check.py` wrote into `out` before (kept), or null with a note saying why."""
    import json

    if out.is_file():
        before = json.loads(out.read_text())
        if before.get("gpu"):
            return {"gpu": before["gpu"], "gpu_note": before.get("gpu_note")}
    return {"gpu": None, "gpu_note": "no GPU measured yet: bench/gpu_check.py measures the GPU figures on a CUDA machine"}


def _plans(config, batch: int, seq: int, **training) -> dict:
    """mode → str(parts) → the plan's figures, or {"unavailable": why} for a mode the family cannot run."""
    out = {}
    for mode in MODES:
        try:
            out[mode] = {str(p): _figures(plan_device(config, mode, parts=p, batch=batch, seq=seq, checkpointing=True, **training))
                         for p in PARTS}
        except ModelError as exc:
            out[mode] = {"unavailable": str(exc)}
    return out


def _figures(plan) -> dict:
    return {"device_bytes": plan.total, "fraction_of_full": plan.fraction_of_full,
            "fraction_of_full_same_training": plan.fraction_of_full_same_training, "fits_gb": plan.card_gib,
            "weights": plan.weights, "routed_experts": plan.routed_experts, "host_experts": plan.host_experts,
            "trainable_state": plan.trainable_state, "activations": plan.activations, "part_experts": plan.part_experts}


if __name__ == "__main__":
    main()
