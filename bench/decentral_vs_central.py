"""Benchmark: the GSM8K job trained through the network against centralised ESFT, at equal training tokens.

The network (`InProcessNetwork`: an owner, M miners in mixed memory modes and V validators on a
manually stepped local chain and a folder store) runs R rounds of H inner steps per miner. The
centralised run trains the same experts (the owner's ESFT-Token selection) with `train_experts`
on exactly the rows the miners drew (`miner_shard` for every round and miner), so both see
M × R × H × batch × seq_len tokens, the central run in one sequence of M × R × H steps. Both
are evaluated as `bench/esft_pilot.py` does, on held-out GSM8K test tokens (response tokens)
and WikiText-2 test tokens. Reported: the ratio of the domain-loss improvements (network ÷
central), general-perplexity drift of each, wall seconds per round and its phases (in-process the
miners run one after another, so the critical path as if they ran in parallel is given too), and
the validator's cost of scoring one submission relative to one evaluation pass over the same
batches (`scoring.scoring_cost`, median of several repeats).

`--sweep` tunes each side on the loss of the job's validation split (records neither miners nor
validators ever see, disjoint from GSM8K test; the test figures are reported, never used to
pick), by greedy line searches that extend themselves until the best value is interior, at the
same token budget. Both sides are held to the job's general-drift budget (2% on the guard's
WikiText-2 validation rows; WikiText-2 test reports): the network by its validators' guard, the
central runs by early stopping (the best validation checkpoint of CENTRAL_CHECKPOINTS whose
general loss is within the budget). Network knobs (`--knobs`): the miners' lr, and the outer
optimizer against plain averaging (it must beat it to be picked); then the same network without
its guard (unconstrained). Central: the lr at the miners' batch and at the data-parallel
equivalent's (miners × rows per step, R × H steps, DiLoCo's own comparison), each once within the
budget and once unconstrained. Every trial, with each central run's checkpoint curve, is in the
JSON. Prints a table and writes bench/results/decentral_vs_central.json.

    .venv/bin/python bench/decentral_vs_central.py [--rounds R] [--miners 4] [--inner-steps H] [--sweep] [--quick]

Torch runs single-threaded by default (`--threads`): on a shared 2-core machine two OpenMP
threads spin-wait against other processes and train several times slower than one. Training is
seeded, but the network's outcome can vary slightly between runs: validators draw their scoring
and merge samples with the chain's block hashes, which differ from one run to the next.
"""

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from moeforge.data.corpora import load_corpus
from moeforge.eval.domain import domain_loss, rows_loss
from moeforge.eval.general import general_perplexity, general_reference_rows
from moeforge.extract.package import MODES
from moeforge.model.load import load_model
from moeforge.model.slices import apply_slice, extract_slice, remove_delta
from moeforge.network.checks import delta_slice, relative_norm_bound
from moeforge.network.jobdata import decode_train_rows, pack_rows, shard, split_job
from moeforge.network.owner import JobRequest
from moeforge.network.scoring import scoring_cost
from moeforge.network.shards import miner_shard
from moeforge.network.state import StateRef, fetch_state
from moeforge.network.transport import unpack
from moeforge.network.validator_round import eval_batches
from moeforge.store.local import LocalStore
from moeforge.train.config import TrainConfig
from moeforge.train.esft import train_experts

from line_search import line_search
from base import testbed_base
from provenance import Run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: harness/ sits beside bench/
from harness.inprocess import InProcessNetwork

RESULTS = Path(__file__).parent / "results" / "decentral_vs_central.json"
SALT = "bench-decentral-vs-central"
JOB_ID = "bench-maths"
TARGET_RATIO = 0.98  # network's domain-loss improvement ÷ centralised ESFT's, at least
TARGET_SCORING = 1.2  # seconds to score one submission ÷ one evaluation pass, at most
OUTER_CANDIDATES = ((1.0, 0.5),)  # (outer lr, momentum) tried against plain averaging; DiLoCo's 0.7/0.9 drifted +140% for no
# gain in an unconstrained run on this testbed before the guard existed
GENERAL_MIX_CANDIDATES = (0.125, 0.25)
CENTRAL_CHECKPOINTS = 16  # evaluations along a central run, for early stopping


@dataclass(frozen=True)
class NetSetting:
    """What the network trials vary; a sweep keeps the token budget M × R × H × batch × seq_len fixed."""

    rounds: int
    inner_steps: int
    lr: float
    top_k: int
    norm_bound: float = 1.0  # × the current experts' global L2 norm (JobRequest's default)
    warmup_steps: int = 2
    guard: bool = True  # the job's general-drift guard (JobRequest's general_rows and general_budget); False: unconstrained
    outer_lr: float = 1.0  # the outer optimizer; 1 and 0 is plain averaging (JobRequest's default)
    outer_momentum: float = 0.0
    general_mix: float = 0.0  # share of each miner's shard replaced by general text (JobRequest.general_mix)

    def label(self) -> str:
        return (f"R={self.rounds} H={self.inner_steps} lr={self.lr:g} top-k={self.top_k} norm bound={self.norm_bound:g} "
                f"outer {self.outer_lr:g}/{self.outer_momentum:g} mix {self.general_mix:g} {'guarded' if self.guard else 'unconstrained'}")


def _with(s: NetSetting, field: str, value) -> dict:
    """The change that sets `field`. Fewer inner steps mean more rounds, so R × H (the token budget) stays; a looser
    norm bound comes with a proportionally larger lr, the step that the tighter bound refused."""
    if field == "inner_steps":
        return {"inner_steps": value, "rounds": s.rounds * s.inner_steps // value}
    if field == "norm_bound":
        return {"norm_bound": value, "lr": s.lr * value / s.norm_bound}
    return {field: value}


def main(argv: list[str] | None = None) -> dict:
    run = Run(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--testbed", type=Path, default=None, help="testbed directory (default: the moeforge cache)")
    parser.add_argument("--miners", type=int, default=4)
    parser.add_argument("--modes", default=None, help="miner memory modes, comma-separated (default: full, quantized, subset in turn)")
    parser.add_argument("--validators", type=int, default=1, help="validators (stake 100, 50, …)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--inner-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step, miners and central alike")
    parser.add_argument("--lr", type=float, default=None, help="the miners' peak learning rate")
    parser.add_argument("--top-k", type=int, default=None, help="deltas the validators merge per round")
    parser.add_argument("--central-lr", type=float, default=None)
    parser.add_argument("--central-warmup", type=int, default=None, help="central warm-up steps (default: 5%% of its steps)")
    parser.add_argument("--eval-tokens", type=int, default=None, help="GSM8K test / WikiText-2 test tokens per evaluation")
    parser.add_argument("--scoring-reps", type=int, default=5)
    parser.add_argument("--sweep", action="store_true", help="run the tuning trials and report the pair picked on validation")
    parser.add_argument("--knobs", default="lr,outer", help="what --sweep tunes on the network, comma-separated, of "
                        "lr, inner_steps, top_k, outer, general_mix, lr_unconstrained (the central side's lr is always tuned, at two batch "
                        "sizes, with early stopping)")
    parser.add_argument("--unconstrained", action="store_true", help="without --sweep, also run the network without its guard")
    parser.add_argument("--quick", action="store_true", help="a tiny configuration for a smoke run")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--run", type=Path, default=None, help="keep the networks' run folders here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    _fill_defaults(args)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    testbed = testbed_base(args.preset, args.testbed)
    base_dir, model, tokenizer = testbed.folder, testbed.model, testbed.tokenizer
    seq_len = testbed.seq_len
    records = list(load_corpus("math", "train"))[: args.records]
    test_records = load_corpus("math", "test")
    modes = args.modes.split(",") if args.modes else [MODES[i % len(MODES)] for i in range(args.miners)]
    if len(modes) != args.miners:
        parser.error(f"--modes names {len(modes)} modes for {args.miners} miners")
    validation = _validation_rows(records, tokenizer, seq_len, args.val_rows)

    guard_ids, guard_labels = general_reference_rows(tokenizer, seq_len=seq_len, rows=JobRequest.model_fields["general_rows"].default)
    budget = JobRequest.model_fields["general_budget"].default

    def evaluate(m) -> dict:
        d = domain_loss(m, tokenizer, test_records, seq_len=seq_len, max_tokens=args.eval_tokens)
        g = general_perplexity(m, tokenizer, seq_len=seq_len, max_tokens=args.eval_tokens)
        v = rows_loss(m, validation.input_ids, validation.labels, batch_size=8)
        guard = rows_loss(m, guard_ids, guard_labels, batch_size=8)
        return {"domain_loss": d.loss, "general_ppl": g.perplexity, "validation_loss": v.loss, "general_val_loss": guard.loss}

    before = evaluate(model)
    print(f"base: GSM8K test loss {before['domain_loss']:.4f}, WikiText-2 ppl {before['general_ppl']:.2f}, "
          f"validation loss {before['validation_loss']:.4f}", flush=True)
    start = NetSetting(args.rounds, args.inner_steps, args.lr, args.top_k)
    knobs = [k for k in args.knobs.split(",") if k] if args.sweep else []

    with tempfile.TemporaryDirectory(prefix="moeforge-dvc-") as tmp:
        runs_root = args.run or Path(tmp)
        net_trials: dict[NetSetting, dict] = {}
        stage = ["start"]  # which knob the sweep is moving, for the trials list
        central_trials: dict[tuple[float, int], dict] = {}

        def network_trial(s: NetSetting) -> dict:
            if s not in net_trials:
                n = len(net_trials) + 1
                print(f"network trial {n}: {s.label()}", flush=True)
                run = _run_network(args, s, base_dir, records, modes, runs_root / f"network-{n}")
                after = _evaluate_state(model, run, evaluate)
                initial = extract_slice(model, run["job"].slots, run["job"].base_fingerprint)  # the owner's round-0 state
                run["norm_bound_round0"] = relative_norm_bound(initial, s.norm_bound)
                net_trials[s] = {"setting": s, "run": run, "after": after, "loss": after["validation_loss"], "stage": stage[0]}
                print(f"  → validation {after['validation_loss']:.4f}, GSM8K test {after['domain_loss']:.4f}, "
                      f"WikiText-2 ppl {after['general_ppl']:.2f}; {run['seconds']:.0f} s", flush=True)
            return net_trials[s]

        def knob(best: dict, field: str, up, down) -> dict:
            stage[0] = field if best["setting"].guard else f"{field} (unconstrained)"

            def trial(value):
                return {**network_trial(replace(best["setting"], **_with(best["setting"], field, value))), "value": value}
            return line_search(trial, getattr(best["setting"], field), up, down)

        best_net = network_trial(start)  # guarded: the job's drift budget holds, so this side is constrained by construction
        if "lr" in knobs:
            best_net = knob(best_net, "lr", lambda v: v * 2, lambda v: v / 2)
        if "inner_steps" in knobs:
            steps = best_net["setting"].rounds * best_net["setting"].inner_steps
            max_rounds = 4 * args.rounds  # more rounds cost validator time per token: two halvings of H at most
            best_net = knob(best_net, "inner_steps", lambda h: 2 * h if steps % (2 * h) == 0 else None,
                            lambda h: h // 2 if h % 2 == 0 and steps // (h // 2) <= max_rounds else None)
        if "top_k" in knobs:
            best_net = knob(best_net, "top_k", lambda k: None, lambda k: k // 2 or None)
        if "outer" in knobs:  # DiLoCo's outer Nesterov against plain averaging, which it must beat to be picked
            stage[0] = "outer"
            for outer_lr, momentum in OUTER_CANDIDATES:
                got = network_trial(replace(best_net["setting"], outer_lr=outer_lr, outer_momentum=momentum))
                if got["loss"] < best_net["loss"]:
                    best_net = got
        if "general_mix" in knobs:  # replay mixing: a share of general text in every miner's shard
            stage[0] = "general_mix"
            for mix in GENERAL_MIX_CANDIDATES:
                got = network_trial(replace(best_net["setting"], general_mix=mix))
                if got["loss"] < best_net["loss"]:
                    best_net = got
        best_free = network_trial(replace(best_net["setting"], guard=False)) if args.sweep or args.unconstrained else None
        if best_free is not None and "lr_unconstrained" in knobs:
            best_free = knob(best_free, "lr", lambda v: v * 2, lambda v: v / 2)
        job, rows_used = best_net["run"]["job"], best_net["run"]["rows_used"]

        def central_trial(lr: float, batch: int) -> dict:
            if (lr, batch) not in central_trials:
                print(f"central trial: lr={lr:g}, {len(rows_used) // batch} steps of {batch} rows over the picked network's rows",
                      flush=True)
                got = _run_central(args, lr, batch, base_dir, job, best_net["run"]["train_rows"], rows_used, evaluate, budget,
                                   before["general_val_loss"])
                central_trials[(lr, batch)] = {**got, "side": "central" if batch == args.batch_size else "data_parallel"}
                c, u = got["constrained"], got["unconstrained"]
                print(f"  → within the budget: {_checkpoint_line(c)}; best overall: {_checkpoint_line(u)}; "
                      f"{got['train_seconds']:.0f} s", flush=True)
            return {**central_trials[(lr, batch)], "value": lr}

        batches = {"central": args.batch_size, "data_parallel": args.batch_size * args.miners}
        picked: dict[str, dict] = {}
        for side, batch in batches.items():
            lr0 = args.central_lr if side == "central" else args.central_lr * 2
            trial = lambda lr, batch=batch: central_trial(lr, batch)  # noqa: E731
            if args.sweep:
                picked[side] = line_search(trial, lr0, lambda v: v * 2, lambda v: v / 2)  # constrained: the budget holds
                picked[f"{side}_unconstrained"] = line_search(trial, picked[side]["lr"], lambda v: v * 2, lambda v: v / 2,
                                                              key="loss_unconstrained")
            else:
                picked[side] = picked[f"{side}_unconstrained"] = trial(lr0)
        cost = _scoring_cost(best_net["run"]["net"], job, args.scoring_reps)

    result = _result(args, before, best_net, best_free, picked, list(net_trials.values()), list(central_trials.values()), cost,
                     modes, seq_len, started, budget)
    _print(result)
    return run.write(args.out, result)


def _fill_defaults(args) -> None:
    """Flags left unset take the configuration's defaults: the sweep's pick, or a tiny one with --quick."""
    if args.quick:
        defaults = dict(rounds=2, inner_steps=2, batch_size=4, lr=1e-2, top_k=4, central_lr=1e-2, eval_tokens=2048,
                        records=600, profile_tokens=2048, score_rows=8, merge_rows=8, report_rows=16, val_rows=16)
        args.scoring_reps = min(args.scoring_reps, 2)
        args.unconstrained = True
    else:
        defaults = dict(rounds=4, inner_steps=16, batch_size=8, lr=2e-3, top_k=4, central_lr=1e-3, eval_tokens=32_768,
                        records=None, profile_tokens=32_768, score_rows=32, merge_rows=32, report_rows=64, val_rows=128)
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _validation_rows(records, tokenizer, seq_len: int, n: int):
    """The first n packed rows of the job's validation split: records no miner or validator sees."""
    fields = JobRequest.model_fields  # the bench's jobs keep the request's default split fractions
    splits = split_job(records, SALT, validation=fields["validation"].default, heldout=fields["heldout"].default)
    packed = pack_rows(splits.validation, tokenizer, seq_len)
    return shard(packed, range(min(n, packed.input_ids.shape[0])))


def _run_network(args, s: NetSetting, base_dir: Path, records, modes: list[str], run_dir: Path) -> dict:
    """One job through the in-process network: its timings, record and final state, and the rows the miners drew."""
    started = time.perf_counter()
    request = JobRequest(
        job_id=JOB_ID, base_model=str(base_dir), domain="math", rounds=s.rounds, inner_steps=s.inner_steps,
        train=TrainConfig(lr=s.lr, batch_size=args.batch_size, warmup_steps=s.warmup_steps, weight_decay=0.0, checkpoint_every=0),
        top_k=s.top_k, norm_bound=s.norm_bound, profile_tokens=args.profile_tokens, score_rows=args.score_rows, merge_rows=args.merge_rows,
        report_rows=args.report_rows, outer_lr=s.outer_lr, outer_momentum=s.outer_momentum, general_mix=s.general_mix,
        **({} if s.guard else {"general_rows": 0}),
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    net = InProcessNetwork.create(run_dir, LocalStore(run_dir / "store"), request, records, SALT, miner_modes=modes,
                                  validator_stakes=[100.0 / 2**j for j in range(args.validators)])
    publish_start = time.perf_counter()
    job = net.publish()
    publish_s = time.perf_counter() - publish_start
    for r in range(s.rounds):
        t = net.run_round(r)
        print(f"  round {r}: {t.total_s:.1f} s (train {sum(t.train_s.values()):.1f}, score {sum(t.score_s.values()):.1f})", flush=True)
    record = net.finish()
    train_rows = decode_train_rows(net.store.get(job.train_data), seq_len=job.seq_len, rows=job.train_rows)
    rows_used = [i for r in range(s.rounds) for m in net.miners
                 for i in miner_shard(job.train_rows, job.job_id, r, m.hotkey, job.shard_rows)]
    prepared = getattr(net, "prepared", {})  # round → hotkey → Prepared, where InProcessNetwork keeps them
    delta_norms = [statistics.median(p.delta_norm for p in prepared[r].values()) if prepared.get(r) else None
                   for r in range(s.rounds)]
    names = {m.hotkey: f"miner-{i} ({modes[i]})" for i, m in enumerate(net.miners)}
    names.update({v.hotkey: f"validator-{j}" for j, v in enumerate(net.validators)})
    return {
        "job": job, "record": record, "store": net.store, "timings": net.timings, "names": names,
        "net": net, "train_rows": train_rows, "rows_used": rows_used, "delta_norms": delta_norms,
        "publish_s": publish_s, "seconds": time.perf_counter() - started,
    }


def _scoring_cost(net: InProcessNetwork, job, reps: int) -> dict:
    """scoring_cost on the last round's scoring batches with one of its revealed deltas; the median of `reps` repeats."""
    validator = net.validators[0]
    r = job.last_round
    report = net.reports[r][validator.hotkey]
    digest = next(v.digest for v in report.verdicts if v.digest is not None)
    _, tensors = unpack(net.store.get(digest))
    delta = delta_slice(tensors, validator.current)  # trained from round r's base, which the validator's model holds
    batches, _ = eval_batches(net.chain, job, r, validator.heldout)
    scoring_cost(validator.model, validator.current, delta, batches, batch_size=job.eval_batch_rows)  # warm-up, not counted
    costs = [scoring_cost(validator.model, validator.current, delta, batches, batch_size=job.eval_batch_rows) for _ in range(reps)]
    return {
        "ratio": statistics.median(c.ratio for c in costs),
        "eval_s": statistics.median(c.eval_s for c in costs),
        "score_s": statistics.median(c.score_s for c in costs),
        "ratios": [c.ratio for c in costs],
        "batches": len(batches),
        "rows": sum(int(b[0].shape[0]) for b in batches),
    }


def _evaluate_state(model, run: dict, evaluate) -> dict:
    """The metrics of `model` holding the job's final expert state; `model` ends as it began."""
    job, record = run["job"], run["record"]
    reference = extract_slice(model, job.slots, job.base_fingerprint)
    final = StateRef(sha256=record.final_state_sha256, digest=record.final_state_digest, round=len(record.rounds) - 1)
    apply_slice(model, fetch_state(run["store"], final, job=job, reference=reference))
    try:
        return evaluate(model)
    finally:
        apply_slice(model, reference)


def _run_central(args, lr: float, batch: int, base_dir: Path, job, train_rows, rows_used: list[int], evaluate,
                 budget: float, general_base: float) -> dict:
    """ESFT on the job's experts over exactly the miners' rows, in one sequence of steps of `batch` rows, evaluated at
    CENTRAL_CHECKPOINTS points along the way. Early stopping picks, on the validation split, the best checkpoint
    overall (`unconstrained`) and the best whose general loss on the guard's WikiText-2 validation rows stays within
    `budget` of the base model's, as the network's guard enforces (`constrained`; None when no checkpoint fits)."""
    packed = shard(train_rows, rows_used)
    steps = len(rows_used) // batch
    warmup = args.central_warmup if args.central_warmup is not None else max(1, round(0.05 * steps))
    cfg = TrainConfig(lr=lr, steps=steps, batch_size=batch, warmup_steps=warmup, weight_decay=0.0, checkpoint_every=0, seed=0)
    trainer = load_model(base_dir)  # its own copy: the evaluator's model stays the base
    every = max(1, steps // CENTRAL_CHECKPOINTS)
    curve = []

    def checkpoint(info) -> None:
        if info.step % every == 0 or info.step == steps:
            training = trainer.training
            curve.append({"step": info.step, "tokens": info.tokens, **evaluate(trainer)})
            trainer.train(training)

    _, result = train_experts(trainer, job.slots, packed, cfg, base_fingerprint=job.base_fingerprint, on_step=checkpoint)
    del trainer
    return {"lr": lr, "batch_size": batch, "steps": steps, "warmup_steps": warmup, "tokens": result.tokens,
            "train_seconds": result.seconds, "tokens_per_s": result.tokens_per_s, "final_train_loss": result.final_loss,
            "curve": curve, **_early_stopping(curve, budget, general_base)}


def _early_stopping(curve: list[dict], budget: float, general_base: float) -> dict:
    """The best checkpoint on validation loss, overall and within the general-drift budget (drift on the guard's rows)."""
    fits = [c for c in curve if c["general_val_loss"] <= general_base + math.log1p(budget)]
    best = min(curve, key=lambda c: c["validation_loss"])
    return {"unconstrained": best, "constrained": min(fits, key=lambda c: c["validation_loss"]) if fits else None,
            "loss": min(c["validation_loss"] for c in fits) if fits else math.inf, "loss_unconstrained": best["validation_loss"]}


def _round_seconds(run: dict) -> list[dict]:
    names = run["names"]
    out = []
    for t in run["timings"]:
        train = {names[h]: s for h, s in t.train_s.items()}
        score = {names[h]: s for h, s in t.score_s.items()}
        out.append({
            "round": t.round,
            "total_s": t.total_s,  # in-process: every miner, then every validator, one after another
            "critical_path_s": max(train.values()) + t.commit_s + t.reveal_s + max(score.values()),
            "train_s": train, "commit_s": t.commit_s, "reveal_s": t.reveal_s, "score_s": score,
            "validator_steps": {names[h]: steps for h, steps in t.validator_steps.items()},
        })
    return out


def _checkpoint_line(c: dict | None) -> str:
    if c is None:
        return "no checkpoint"
    return (f"step {c['step']} validation {c['validation_loss']:.4f}, GSM8K test {c['domain_loss']:.4f}, "
            f"WikiText-2 ppl {c['general_ppl']:.2f}")


def _validator_round_seconds(run: dict) -> dict:
    """Mean seconds per round of the first validator's passes: every phase it timed, and their total."""
    names = run["names"]
    phases: dict[str, list[float]] = {}
    for t in run["timings"]:
        first = next(iter(t.validator_steps.values()), {})
        for phase, seconds in first.items():
            phases.setdefault(phase, []).append(seconds)
    means = {phase: statistics.fmean(v) for phase, v in phases.items()}
    return {"validator": next(iter(names[h] for h in run["timings"][0].validator_steps), None) if run["timings"] else None,
            "phases": means, "total": sum(means.values()),
            "what": "score: Proof-of-Loss of every submission (and its general-loss pass); evidence: own-shard evidence; "
                    "merge: the candidates under the guard's line search and leave-one-out credit"}


def _result(args, before, best_net, best_free, picked, net_trials, central_trials, cost, modes, seq_len, started, budget) -> dict:
    s, run = best_net["setting"], best_net["run"]
    job, record = run["job"], run["record"]
    central = picked["central"]["constrained"] or picked["central"]["unconstrained"]
    best_central = min((picked["central"], picked["data_parallel"]), key=lambda t: t["loss"])  # over lr, batch and early stopping
    central_best = best_central["constrained"] or best_central["unconstrained"]
    net_after = best_net["after"]
    net_gain = before["domain_loss"] - net_after["domain_loss"]
    gain = lambda c: before["domain_loss"] - c["domain_loss"] if c else math.nan  # noqa: E731
    central_gain = gain(central_best)
    tokens_network = args.miners * s.rounds * s.inner_steps * args.batch_size * seq_len
    rounds = _round_seconds(run)
    mean = lambda key: statistics.fmean(r[key] for r in rounds)  # noqa: E731
    ratio = net_gain / central_gain if central_gain > 0 else math.nan
    free_gain = before["domain_loss"] - best_free["after"]["domain_loss"] if best_free else math.nan
    central_free = min((picked["central_unconstrained"], picked["data_parallel_unconstrained"]),
                       key=lambda t: t["loss_unconstrained"])["unconstrained"]
    dp = picked["data_parallel"]["constrained"] or picked["data_parallel"]["unconstrained"]
    drift = lambda m: m["general_ppl"] / before["general_ppl"] - 1  # noqa: E731
    guard_drift = lambda m: math.exp(m["general_val_loss"] - before["general_val_loss"]) - 1  # noqa: E731
    return {
        "preset": args.preset,
        "miners": args.miners,
        "miner_modes": modes,
        "validators": args.validators,
        "rounds": s.rounds,
        "inner_steps": s.inner_steps,
        "batch_size": args.batch_size,
        "seq_len": seq_len,
        "experts": len(job.slots),
        "selection": "ESFT-Token p=0.2 (the owner's profile of the job's train split), the same experts for both",
        "train_tokens_network": tokens_network,
        "train_tokens_central": picked["central"]["tokens"],
        "token_accounting": (f"network: {args.miners} miners × {s.rounds} rounds × {s.inner_steps} inner steps × "
                             f"{args.batch_size} rows × {seq_len} tokens; central: {picked['central']['steps']} steps × "
                             f"{args.batch_size} rows × {seq_len} tokens over exactly the rows the miners drew; data-parallel: "
                             f"{picked['data_parallel']['steps']} steps × {batches_dp(args)} rows over the same rows"),
        "lr_network": s.lr,
        "warmup_network": s.warmup_steps,
        "top_k": s.top_k,
        "norm_bound": s.norm_bound,
        "lr_central": picked["central"]["lr"],
        "warmup_central": picked["central"]["warmup_steps"],
        "schedule": "linear warm-up then cosine decay to a tenth; miners restart it (and AdamW) every round",
        "eval_tokens": args.eval_tokens,
        "general_budget": {
            "budget": budget, "reference": "WikiText-2 validation, the first "
            f"{JobRequest.model_fields['general_rows'].default} rows (the network's guard rows; WikiText-2 test reports)",
            "rule": "network: validators never adopt a state past it (merge.py); central: early stopping at the best "
                    "validation checkpoint within it",
        },
        "outer_optimizer": {"name": "plain averaging" if (s.outer_lr, s.outer_momentum) == (1.0, 0.0) else "Nesterov SGD",
                            "lr": s.outer_lr, "momentum": s.outer_momentum},
        "domain_loss_before": before["domain_loss"],
        "domain_loss_central": central_best["domain_loss"],
        "domain_loss_network": net_after["domain_loss"],
        "domain_gain_central": central_gain,
        "domain_gain_network": net_gain,
        "improvement_ratio": ratio,
        "improvement_ratio_unconstrained": free_gain / gain(central_free) if gain(central_free) > 0 else math.nan,
        "improvement_ratio_data_parallel": net_gain / gain(dp) if gain(dp) > 0 else math.nan,
        "central_picked": {"batch_size": best_central["batch_size"], "lr": best_central["lr"], "step": central_best["step"],
                           "steps": best_central["steps"]},
        "central_same_batch": {"lr": picked["central"]["lr"], **(central or {})},
        "data_parallel": {"lr": picked["data_parallel"]["lr"], "batch_size": picked["data_parallel"]["batch_size"],
                          "steps": picked["data_parallel"]["steps"], **(dp or {})},
        "unconstrained": {
            "network": ({"lr": best_free["setting"].lr, **best_free["after"], "general_ppl_drift": drift(best_free["after"])}
                        if best_free else None),
            "central": {"lr": min((picked["central_unconstrained"], picked["data_parallel_unconstrained"]),
                                  key=lambda t: t["loss_unconstrained"])["lr"], **central_free,
                        "general_ppl_drift": drift(central_free)},
        },
        "general_ppl_before": before["general_ppl"],
        "general_ppl_central": central_best["general_ppl"],
        "general_ppl_network": net_after["general_ppl"],
        "general_ppl_drift_central": drift(central_best),
        "general_ppl_drift_network": drift(net_after),
        "general_val_loss_before": before["general_val_loss"],
        "general_val_drift_central": guard_drift(central_best),
        "general_val_drift_network": guard_drift(net_after),
        "validation_loss_before": before["validation_loss"],
        "validation_loss_central": central_best["validation_loss"],
        "validation_loss_network": net_after["validation_loss"],
        "network_record": {
            "heldout_loss_before": record.heldout_loss_before, "heldout_loss_after": record.heldout_loss_after,
            "rounds": [{"round": e.round, "outcome": e.outcome, "choice": e.choice, "scale": e.scale, "accepted": len(e.accepted),
                        "gain": e.gain, "losses": e.losses} for e in record.rounds],
        },
        "round_seconds": rounds,
        "round_seconds_mean": mean("total_s"),
        "round_critical_path_s_mean": mean("critical_path_s"),
        "validator_round_seconds": _validator_round_seconds(run),
        "publish_s": run["publish_s"],
        "network_seconds": run["seconds"],
        "central_train_seconds": picked["central"]["train_seconds"],
        "central_tokens_per_s": picked["central"]["tokens_per_s"],
        "scoring_cost_ratio": cost["ratio"],
        "scoring_cost": cost,
        "targets": {
            "improvement_ratio_at_least": TARGET_RATIO, "improvement_ratio_met": bool(ratio >= TARGET_RATIO),
            "general_ppl_drift_network_at_most": budget, "general_ppl_drift_network_met": bool(drift(net_after) <= budget),
            "scoring_cost_ratio_at_most": TARGET_SCORING, "scoring_cost_ratio_met": bool(cost["ratio"] <= TARGET_SCORING),
        },
        "tuning": ("picked on the loss of the job's validation split (records no miner or validator sees, disjoint "
                   "from GSM8K test); GSM8K test is reported, never used to pick; each line search extends until its best "
                   "value is interior" if args.sweep else
                   "one configuration, the defaults (the pick of an earlier --sweep) or the flags given"),
        "trials": ([{**_trial_row(t, before, central_gain), "picked": t["setting"] == s} for t in net_trials]
                   + [{**_central_row(t, before), "picked": (t["lr"], t["batch_size"]) == (best_central["lr"], best_central["batch_size"])}
                      for t in central_trials]),
        "quick": args.quick,
        "bench_seconds": time.perf_counter() - started,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "load_avg_1m_at_end": os.getloadavg()[0]},
    }


def batches_dp(args) -> int:
    return args.batch_size * args.miners


def _trial_row(t: dict, before: dict, central_gain: float) -> dict:
    s, run, after = t["setting"], t["run"], t["after"]
    gain = before["domain_loss"] - after["domain_loss"]
    refused: dict[str, int] = {}
    for entry in run["record"].rounds:
        for rejection in entry.rejections.values():
            refused[rejection.reason] = refused.get(rejection.reason, 0) + 1
    return {
        "side": "network", "stage": t["stage"], "rounds": s.rounds, "inner_steps": s.inner_steps, "lr": s.lr, "top_k": s.top_k,
        "norm_bound": s.norm_bound, "guard": s.guard, "outer_lr": s.outer_lr, "outer_momentum": s.outer_momentum,
        "general_mix": s.general_mix, "validation_loss": after["validation_loss"], "domain_loss": after["domain_loss"],
        "domain_gain": gain, "ratio_to_picked_central": gain / central_gain if central_gain > 0 else math.nan,
        "general_ppl": after["general_ppl"], "general_ppl_drift": after["general_ppl"] / before["general_ppl"] - 1,
        "choices": [e.choice for e in run["record"].rounds], "refused": refused,
        "delta_norm_median_per_round": run["delta_norms"], "norm_bound_round0": run["norm_bound_round0"],
        "seconds": run["seconds"],
    }


def _central_row(t: dict, before: dict) -> dict:
    row = {"side": t["side"], "steps": t["steps"], "batch_size": t["batch_size"], "lr": t["lr"], "warmup_steps": t["warmup_steps"],
           "seconds": t["train_seconds"], "curve": t["curve"]}
    for name in ("constrained", "unconstrained"):
        c = t[name]
        row[name] = None if c is None else {
            "step": c["step"], "validation_loss": c["validation_loss"], "domain_loss": c["domain_loss"],
            "domain_gain": before["domain_loss"] - c["domain_loss"], "general_ppl": c["general_ppl"],
            "general_ppl_drift": c["general_ppl"] / before["general_ppl"] - 1}
    return row


def _print(r: dict) -> None:
    print()
    print(f"GSM8K job on the {r['preset']} testbed: {r['experts']} ESFT-Token experts; {r['miners']} miners "
          f"({', '.join(r['miner_modes'])}), {r['validators']} validator(s), {r['rounds']} rounds × {r['inner_steps']} inner steps "
          f"× {r['batch_size']} rows × {r['seq_len']} tokens")
    print(f"training tokens: network {r['train_tokens_network']:,}, central {r['train_tokens_central']:,}; lr network "
          f"{r['lr_network']:g} (top-k {r['top_k']}, norm bound {r['norm_bound']:g}× the experts' norm), central {r['lr_central']:g}")
    print(f"{'':9s} {'GSM8K test loss':>22s} {'gain':>7s} {'WikiText-2 ppl':>20s} {'drift':>8s} {'validation':>10s}")
    for side in ("central", "network"):
        print(f"{side:9s} {r['domain_loss_before']:8.4f} → {r[f'domain_loss_{side}']:8.4f} {r[f'domain_gain_{side}']:7.4f} "
              f"{r['general_ppl_before']:8.2f} → {r[f'general_ppl_{side}']:8.2f} {100 * r[f'general_ppl_drift_{side}']:+7.2f}% "
              f"{r[f'validation_loss_{side}']:10.4f}")
    t = r["targets"]
    print(f"improvement ratio (network ÷ best central, both within the {100 * r['general_budget']['budget']:g}% budget): "
          f"{r['improvement_ratio']:.3f}  (target ≥ {t['improvement_ratio_at_least']}: {'met' if t['improvement_ratio_met'] else 'NOT met'}); "
          f"central picked: batch {r['central_picked']['batch_size']}, lr {r['central_picked']['lr']:g}, "
          f"step {r['central_picked']['step']} of {r['central_picked']['steps']}")
    print(f"  unconstrained: {r['improvement_ratio_unconstrained']:.3f}; against the data-parallel equivalent: "
          f"{r['improvement_ratio_data_parallel']:.3f}; network drift {100 * r['general_ppl_drift_network']:+.2f}% "
          f"(target ≤ {100 * t['general_ppl_drift_network_at_most']:g}%: {'met' if t['general_ppl_drift_network_met'] else 'NOT met'})")
    v = r["validator_round_seconds"]
    print(f"validator per round: {v['total']:.1f} s (" + ", ".join(f"{k} {x:.1f}" for k, x in v["phases"].items()) + ")")
    print(f"scoring one submission ÷ one evaluation pass: {r['scoring_cost_ratio']:.3f}× "
          f"({r['scoring_cost']['score_s']:.2f} s ÷ {r['scoring_cost']['eval_s']:.2f} s over {r['scoring_cost']['rows']} rows; "
          f"target ≤ {t['scoring_cost_ratio_at_most']}: {'met' if t['scoring_cost_ratio_met'] else 'NOT met'})")
    rounds = r["round_seconds"]
    miners = list(rounds[0]["train_s"])
    validators = list(rounds[0]["score_s"])
    print(f"{'round':>5s} " + " ".join(f"{m[:15]:>15s}" for m in miners) + f" {'commit':>7s} {'reveal':>7s} "
          + " ".join(f"{v:>11s}" for v in validators) + f" {'sequential':>10s} {'critical':>9s}")
    for row in rounds:
        print(f"{row['round']:5d} " + " ".join(f"{row['train_s'][m]:15.1f}" for m in miners)
              + f" {row['commit_s']:7.2f} {row['reveal_s']:7.2f} " + " ".join(f"{row['score_s'][v]:11.1f}" for v in validators)
              + f" {row['total_s']:10.1f} {row['critical_path_s']:9.1f}")
    print(f"mean round: {r['round_seconds_mean']:.1f} s in-process (miners in turn), {r['round_critical_path_s_mean']:.1f} s "
          "critical path (miners in parallel); validator steps, last round: "
          + ", ".join(f"{k} {v:.2f}" for k, v in rounds[-1]["validator_steps"][validators[0]].items()))
    if len(r["trials"]) > 2:
        print("trials (* picked, on validation loss; GSM8K test shown, not used to pick):")
        for t in r["trials"]:
            if t["side"] == "network":
                what = (f"network R={t['rounds']} H={t['inner_steps']} lr={t['lr']:g} top-k={t['top_k']} outer "
                        f"{t['outer_lr']:g}/{t['outer_momentum']:g}{'' if t['guard'] else ' unconstrained'}")
                print(f"  {'*' if t['picked'] else ' '} {what:58s} validation {t['validation_loss']:.4f}  test {t['domain_loss']:.4f} "
                      f"(gain {t['domain_gain']:.4f})  ppl {t['general_ppl']:7.2f} ({100 * t['general_ppl_drift']:+.1f}%)"
                      + (f"  refused {t['refused']}" if t.get("refused") else ""))
                continue
            for name in ("constrained", "unconstrained"):
                c = t[name]
                what = f"{t['side']} b={t['batch_size']} lr={t['lr']:g} {name}"
                if c is None:
                    print(f"    {what:58s} no checkpoint within the budget")
                    continue
                print(f"  {'*' if t['picked'] and name == 'constrained' else ' '} {what:58s} validation {c['validation_loss']:.4f}  "
                      f"test {c['domain_loss']:.4f} (gain {c['domain_gain']:.4f})  ppl {c['general_ppl']:7.2f} "
                      f"({100 * c['general_ppl_drift']:+.1f}%) at step {c['step']}/{t['steps']}")
    print(f"torch threads {r['machine']['torch_threads']}, load average {r['machine']['load_avg_1m_at_end']:.1f}; "
          f"bench {r['bench_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
