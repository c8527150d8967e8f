"""Benchmark: every attack of `harness.adversary` against an in-process network, T trials each.

Per trial (its own salt, so its own splits, shards and eval seeds): a two-round job on the small
testbed with two honest miners, one adversary per attack class (a sybil group of three), an
honest validator (stake 100) and a dishonest one (stake 50) that publishes a wrong merged state;
a one-round job with a loose norm bound for the NaN-batch exploit; and a three-round job that
requires own-shard evidence (four passes over quarter-size shards, significant at 0.05) with three
honest miners and the `SHARD_EVIDENCE` attacks (free rider, diluted copy, same-block copy with a
ground hash, minimal effort; the last is judged on merits, so its row records `share`, what it was
paid of each merged round, against `fair_share`, its leave-one-out marginal gain ÷ the round's
total, averaged over the rounds with a merge). In that job it also keeps every own-shard evidence p-value the honest
validator computed, and reports the trade-off the job's `evidence_significance` sets (`evidence_tradeoff`): at each
level, the share of honest submissions whose evidence would fail it and the share of each attack class's that would
pass it. Counts, per attack class,
submissions judged, merged (in any adopted state's contributions) and rewarded (a positive weight
from any validator); the honest miners' share of all weights set; the validator's extra cost of the
checks per submission (fetch + unpack + checks + copy/replay detection, against scoring); and the
fault-injection columns, read from bench/results/faults.json (run bench/faults.py first). Prints a table and writes
bench/results/attacks.json.

    .venv/bin/python bench/attacks.py [--trials 3] [--seed 0] [--out bench/results/attacks.json]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from moeforge.data.corpora import load_corpus
from moeforge.network.owner import JobRequest
from moeforge.network.state import base_state
from moeforge.store.local import LocalStore
from moeforge.testbed.build import build_testbed
from moeforge.testbed.config import preset
from moeforge.train.config import TrainConfig
from moeforge.versions import software_versions

from provenance import Run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: harness/ sits beside bench/
from harness.adversary import ATTACKS, SHARD_EVIDENCE, DishonestValidator, adversaries
from harness.inprocess import InProcessNetwork

RESULTS = Path(__file__).parent / "results" / "attacks.json"
FAULTS_RESULTS = Path(__file__).parent / "results" / "faults.json"
ROUNDS = 2
EVIDENCE_ROUNDS = 3  # the free rider needs an adopted update to ride on
EVIDENCE_JOB = dict(rounds=EVIDENCE_ROUNDS, shard_passes=4, evidence_significance=0.05)  # as tests/network/test_attacks.py
RECORDS = 600
WRONG_STATE = "wrong_state_validator"


def job_request(model_dir: Path, **overrides) -> JobRequest:
    fields = dict(
        job_id="maths-attacks", base_model=str(model_dir), domain="math", heldout=0.2, rounds=ROUNDS, inner_steps=10,
        train=TrainConfig(lr=1e-2, batch_size=8, warmup_steps=1, weight_decay=0.0, checkpoint_every=0),
        profile_tokens=4096, score_rows=16, merge_rows=16, eval_batch_rows=8, report_rows=32,
        train_blocks=6, commit_blocks=3, reveal_blocks=4, score_blocks=4, start_delay_blocks=2,
    )
    return JobRequest(**{**fields, **overrides})


def _network(run: Path, request: JobRequest, records, salt: str, names, stakes, seed: int, honest: int = 2) -> InProcessNetwork:
    net = InProcessNetwork.create(run, LocalStore(run / "store"), request, records, salt, miner_modes=["full"] * honest,
                                  validator_stakes=stakes, chain_seed=seed)  # the trial's chain: its block hashes follow from the seed
    net.publish()
    adversaries(net, names, victim=net.miners[0].hotkey, seed=seed)
    return net


def _weights(net) -> tuple[dict[str, float], float]:
    """(hotkey → the largest weight any validator set on it, the sum of every weight row set)."""
    uid = {n.hotkey: n.uid for n in net.chain.metagraph().neurons}
    best, total = {}, 0.0
    for row in net.chain.weights().values():
        total += sum(row.values())
        for hotkey, u in uid.items():
            best[hotkey] = max(best.get(hotkey, 0.0), row.get(u, 0.0))
    return best, total


def _honest(net) -> list:
    return [m for m in net.miners if getattr(m, "attack", None) is None]


def _honest_weight(net) -> float:
    uid = {n.hotkey: n.uid for n in net.chain.metagraph().neurons}
    return sum(row.get(uid[m.hotkey], 0.0) for row in net.chain.weights().values() for m in _honest(net))


def _tally(net, record, table: dict, cost: dict) -> None:
    honest_validator = net.validators[0].hotkey
    weights, _ = _weights(net)
    merged_by = {h for entry in record.rounds for h in entry.contributions} if record else set()
    for r, reports in net.reports.items():
        report = reports[honest_validator]
        merged_by |= set(report.contributions)
        n_revealed = sum(v.digest is not None for v in report.verdicts)
        n_scored = sum(v.score is not None or v.reject in ("no_improvement", "non_finite_loss") for v in report.verdicts)
        cost["check_s"] += report.timings.get("fetch_check", 0.0) + report.timings.get("copies", 0.0)
        cost["submissions"] += n_revealed
        cost["score_s"] += report.timings.get("score", 0.0)
        cost["scored"] += n_scored
    for miner in net.miners:
        if getattr(miner, "attack", None) is None:
            continue
        row = table.setdefault(miner.attack.name, {"trials": 0, "submissions": 0, "merged": 0, "rewarded": 0, "reasons": {}})
        for r, reports in net.reports.items():
            report = reports[honest_validator]
            entry = next((v for v in report.verdicts if v.hotkey == miner.hotkey), None)
            if entry is not None:
                row["submissions"] += 1
                reason = entry.reject or "accepted"
                row["reasons"][reason] = row["reasons"].get(reason, 0) + 1
            if miner.attack.name == "minimal_effort" and report.contributions:
                positive = {h: max(0.0, m) for h, m in report.marginal.items()}
                total = sum(positive.values())
                row.setdefault("rounds_merged", []).append({
                    "round": r, "share": report.contributions.get(miner.hotkey, 0.0),
                    "fair_share": positive.get(miner.hotkey, 0.0) / total if total > 0 else 0.0})
        row["merged"] += miner.hotkey in merged_by
        row["rewarded"] += weights.get(miner.hotkey, 0.0) > 0


EVIDENCE_LEVELS = (0.1, 0.05, 0.02, 0.01, 0.005, 0.001)


def _evidence_p(net, into: dict[str, list[float]]) -> None:
    """Every own-shard evidence p-value the honest validator computed in `net`, under "honest" or the attack's name."""
    attack = {m.hotkey: (m.attack.name if getattr(m, "attack", None) is not None else "honest") for m in net.miners}
    for reports in net.reports.values():
        for v in reports[net.validators[0].hotkey].verdicts:
            if v.evidence_p is not None:
                into.setdefault(attack[v.hotkey], []).append(v.evidence_p)


def evidence_tradeoff(evidence_p: dict[str, list[float]]) -> dict:
    """Per level: honest submissions whose evidence fails it, and each other class's that pass it (p < level)."""
    honest = evidence_p.get("honest", [])
    return {
        "counts": {k: len(v) for k, v in sorted(evidence_p.items())},
        "honest_p_max": max(honest) if honest else None,
        "levels": {f"{level:g}": {"honest_failing": sum(p >= level for p in honest) / len(honest) if honest else None,
                                  **{f"{k}_passing": sum(p < level for p in v) / len(v) for k, v in sorted(evidence_p.items())
                                     if k != "honest" and v}}
                   for level in EVIDENCE_LEVELS},
        "what": "own-shard evidence p-values of the evidence job's submissions (those whose Proof-of-Loss gain was "
                "significant; the others are never asked for evidence); a class passes a level where p < level",
    }


def run_trials(trials: int, seed: int, model_dir: Path, records, work: Path) -> dict:
    names = [n for n in ATTACKS if n not in ("nan_batches", *SHARD_EVIDENCE)]
    table: dict[str, dict] = {}
    cost = {"check_s": 0.0, "submissions": 0, "score_s": 0.0, "scored": 0}
    honest_w = total_w = evidence_honest_w = evidence_total_w = 0.0
    wrong = {"trials": 0, "submissions": 0, "merged": 0, "rewarded": 0, "flagged": 0}
    evidence_p: dict[str, list[float]] = {}
    for t in range(trials):
        s = seed + t
        salt = f"attacks-{s}"
        start = time.perf_counter()
        net = _network(work / f"trial-{s}", job_request(model_dir), records, salt, names + ["nan_batches"], [100.0, 50.0], s)
        net.validators[1] = DishonestValidator(net.validators[1], seed=s)
        for r in range(ROUNDS):
            net.run_round(r)
        record = net.finish()
        _tally(net, record, table, cost)
        honest_w += _honest_weight(net)
        total_w += _weights(net)[1]
        dishonest = net.validators[1]
        wrong["trials"] += 1
        for r in range(ROUNDS):
            wrong["submissions"] += 1
            wrong["merged"] += base_state(net.chain, net.store, net.owner.job, r + 1).sha256 == dishonest.published[r]
        wrong["flagged"] += dishonest.hotkey in net.reports[1][net.validators[0].hotkey].disagreements
        loose = _network(work / f"loose-{s}", job_request(model_dir, rounds=1, norm_bound=1e40), records, salt, ["nan_batches"], [100.0], s)
        loose.run_round(0)
        _tally(loose, None, table, cost)
        honest_w += _honest_weight(loose)
        total_w += _weights(loose)[1]
        gauntlet = _network(work / f"gauntlet-{s}", job_request(model_dir, **EVIDENCE_JOB), records, salt, SHARD_EVIDENCE,
                            [100.0], s, honest=3)
        for r in range(EVIDENCE_ROUNDS):
            gauntlet.run_round(r)
        _tally(gauntlet, gauntlet.finish(), table, cost)
        _evidence_p(gauntlet, evidence_p)
        evidence_honest_w += _honest_weight(gauntlet)
        evidence_total_w += _weights(gauntlet)[1]
        for row in table.values():
            row["trials"] = t + 1
        print(f"trial {t + 1}/{trials} (seed {s}): {time.perf_counter() - start:.1f} s", file=sys.stderr)
    table[WRONG_STATE] = wrong
    lazy = table.get("minimal_effort")
    if lazy is not None:  # judged on merits: paid at most its measured marginal contribution
        rounds = lazy.pop("rounds_merged", [])
        lazy["share"] = sum(x["share"] for x in rounds) / len(rounds) if rounds else 0.0
        lazy["fair_share"] = sum(x["fair_share"] for x in rounds) / len(rounds) if rounds else 0.0
        lazy["share_le_fair_share_every_round"] = all(x["share"] <= x["fair_share"] + 1e-12 for x in rounds)
        lazy["rounds_with_a_merge"] = len(rounds)
    per_check = cost["check_s"] / max(1, cost["submissions"])
    per_score = cost["score_s"] / max(1, cost["scored"])
    return {
        "attacks": table,
        "honest_reward_share": honest_w / total_w if total_w else None,
        "honest_reward_share_with_minimal_effort": evidence_honest_w / evidence_total_w if evidence_total_w else None,
        "evidence_tradeoff": evidence_tradeoff(evidence_p),
        "check_cost": {
            "check_s_per_submission": per_check, "score_s_per_scored_submission": per_score,
            "ratio": per_check / per_score if per_score else None,
            "what": "honest validator's fetch + unpack + checks + copy/replay detection per revealed submission, "
                    "against Proof-of-Loss scoring per scored submission",
        },
    }


def fault_columns() -> dict:
    """The fault-injection columns, from bench/results/faults.json (what `bench/faults.py` last wrote, with its
    provenance); nulls when that file is missing."""
    if not FAULTS_RESULTS.is_file():
        return {"fault_trials": None, "fault_trials_survived": None, "faults_from": None,
                "faults_note": f"{FAULTS_RESULTS.name} is missing: run bench/faults.py first"}
    got = json.loads(FAULTS_RESULTS.read_text())
    return {"fault_trials": got["fault_trials"], "fault_trials_survived": got["fault_trials_survived"],
            "faults_from": {"file": f"bench/results/{FAULTS_RESULTS.name}", "command": got.get("command"),
                            "git_commit": got.get("git_commit"), "started_at": got.get("started_at")}, "faults_note": None}


def main(argv: list[str] | None = None) -> dict:
    run = Run(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--testbed", type=Path, default=None, help="small testbed directory (default: the moeforge cache)")
    parser.add_argument("--no-faults", action="store_true", help="leave the fault-injection columns null (else they are "
                        "read from bench/results/faults.json)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one trial, no fault trials")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.no_faults = 1, True

    torch.set_num_threads(1)
    cfg = preset("small")
    home = Path(os.environ.get("MOEFORGE_HOME") or Path.home() / ".cache" / "moeforge")
    model_dir = args.testbed or home / "testbed" / f"small-{cfg.key()}"
    build_testbed(cfg, model_dir)
    records = list(load_corpus("math", "train")[:RECORDS])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moeforge-attacks-") as work:
        result = run_trials(args.trials, args.seed, model_dir, records, Path(work))
    result.update(fault_columns() if not args.no_faults else
                  {"fault_trials": None, "fault_trials_survived": None, "faults_from": None, "faults_note": "--no-faults"})
    result.update({
        "trials": args.trials, "seed": args.seed, "rounds": ROUNDS, "seconds": round(time.perf_counter() - start, 1),
        "versions": software_versions(),
    })
    _print(result)
    return run.write(args.out, result)


def _print(result: dict) -> None:
    print(f"{'attack class':24s} {'trials':>6s} {'judged':>6s} {'merged':>6s} {'rewarded':>8s}  reasons")
    for name, row in result["attacks"].items():
        reasons = row.get("reasons") or ({"flagged": row["flagged"]} if "flagged" in row else {})
        print(f"{name:24s} {row['trials']:6d} {row['submissions']:6d} {row['merged']:6d} {row['rewarded']:8d}  "
              + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    share = result["honest_reward_share"]
    print(f"honest miners' share of rewards: {share:.3f}" if share is not None else "honest miners' share of rewards: n/a")
    lazy = result["attacks"].get("minimal_effort")
    if lazy is not None:
        print(f"minimal effort: share {lazy['share']:.3f} vs fair share {lazy['fair_share']:.3f} over {lazy['rounds_with_a_merge']} "
              f"merged rounds; honest share with it present {result['honest_reward_share_with_minimal_effort']:.3f}")
    tradeoff = result["evidence_tradeoff"]
    print(f"own-shard evidence p-values {tradeoff['counts']}; at each level, honest failing / others passing:")
    for level, row in tradeoff["levels"].items():
        print(f"  {level:>6}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if v is not None))
    c = result["check_cost"]
    print(f"checks per submission {c['check_s_per_submission'] * 1e3:.1f} ms vs scoring {c['score_s_per_scored_submission'] * 1e3:.1f} ms"
          + (f" (ratio {c['ratio']:.3f})" if c["ratio"] is not None else ""))
    print(f"fault-injection trials survived: {result['fault_trials_survived']} of {result['fault_trials']}")


if __name__ == "__main__":
    main()
