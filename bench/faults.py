"""Benchmark: kill -9 a role at every fault point of a real local network (or take its chain or store away for
a while), restart it, and check the job survives.

Each trial starts a fresh local network (owner, two miners, one validator, two rounds on the small testbed)
on its lock-step chain with the tight schedule `network up` uses, and injects one fault. The scenarios are
every (role, point) the fault hook knows (moeforge/network/faults.py; miners die the first time they reach
the point, the validator and the owner's `mid_job` in a drawn round), a chain outage and a store outage
(the folder renamed away for a few seconds in the middle of a drawn round); `--trials` runs them in turn,
shuffled by `--seed`, with the member and the round drawn from it too. A killed role is restarted with its
exact command. A trial survives when the job ends with a valid record (every round recorded, contributions
to miners summing to 1, held-out loss lower after than before), every object in the store re-hashes to its
name, and no validator published two different results for a round. Prints a table and writes
bench/results/faults.json; `bench/attacks.py` takes its fault columns from that file.

    .venv/bin/python bench/faults.py [--trials 54] [--seed 0] [--quick]
"""

import argparse
import json
import logging
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from moeforge.network.faults import POINTS
from moeforge.network.local import LOCKSTEP_SCHEDULE, NetworkPlan, run_local_network
from moeforge.network.observe import read_events
from moeforge.store.local import LocalStore

from provenance import Run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: harness/ sits beside bench/
from harness.faults import corrupt_objects, double_publications, record_problems

RESULTS = Path(__file__).parent / "results" / "faults.json"
ROUNDS = 2
RECORDS = 600  # of GSM8K's train split, as the network tests use
ROUND_POINTS = {"validator", "owner:mid_job"}  # fault points that fire in a drawn round (the rest: first time reached)
OUTAGES = {"chain": "chain", "store": "store"}  # scenario role → the folder taken away
OUTAGE_S = 3.0  # how long the folder stays away
SCENARIOS = [(role, point) for role, points in POINTS.items() for point in points] + [(r, "outage") for r in OUTAGES]
DEFAULT_TRIALS = 2 * len(SCENARIOS)  # every scenario twice


def run_fault_trials(trials: int, seed: int) -> dict:
    """`trials` trials of the scenarios in turn, shuffled by `seed` → {"fault_trials", "fault_trials_survived",
    "faults": [{"role", "point", "round", "member", "survived", "detail", ...}], ...}."""
    rng = random.Random(seed)
    order = []
    while len(order) < trials:
        batch = list(SCENARIOS)
        rng.shuffle(batch)
        order += batch
    faults = []
    with tempfile.TemporaryDirectory(prefix="moeforge-faults-") as tmp:
        model_dir, data_file = _testbed_and_data(Path(tmp))
        for trial, (role, point) in enumerate(order[:trials]):
            rnd = rng.randrange(ROUNDS) if role in ROUND_POINTS or f"{role}:{point}" in ROUND_POINTS or point == "outage" else None
            member = {"owner": "owner", "validator": "validator-0", "miner": f"miner-{rng.randrange(2)}"}.get(role, role)
            salt = f"fault-trial-{seed}-{trial}"  # the held-out split, drawn per trial and reproducible
            faults.append(_trial(Path(tmp) / f"trial-{trial}", model_dir, data_file, member, role, point, rnd, salt))
            f = faults[-1]
            print(f"trial {trial + 1}/{trials}: {role}:{point}{'@' + str(rnd) if rnd is not None else ''} "
                  f"{'survived' if f['survived'] else 'FAILED'} in {f['seconds']:.0f} s", flush=True)
    return {
        "fault_trials": len(faults),
        "fault_trials_survived": sum(f["survived"] for f in faults),
        "faults": faults,
        "scenarios": [f"{role}:{point}" for role, point in SCENARIOS],
        "seed": seed,
        "rounds": ROUNDS,
        "schedule": LOCKSTEP_SCHEDULE,
    }


def _trial(run: Path, model_dir: Path, data_file: Path, member: str, role: str, point: str, rnd: int | None,
           salt: str) -> dict:
    from moeforge.network.owner import JobRequest
    from moeforge.train.config import TrainConfig

    request = JobRequest(
        job_id="maths-fault-trial", base_model=str(model_dir), domain="maths.jsonl", heldout=0.2, rounds=ROUNDS,
        inner_steps=10, train=TrainConfig(lr=1e-2, batch_size=8, warmup_steps=1, weight_decay=0.0, checkpoint_every=0),
        profile_tokens=4096, score_rows=16, merge_rows=16, eval_batch_rows=8, report_rows=32, **LOCKSTEP_SCHEDULE,
    )
    outage = point == "outage"
    chain_dir = run / "chain"
    plan = NetworkPlan(run_dir=run, request=request, data=str(data_file),
                       data_options={"prompt_field": "prompt", "response_field": "response"},
                       miner_modes=("full", "full"), validator_stakes=(100.0,),
                       chain_url=f"local://{chain_dir / 'chain.sqlite'}?lockstep_s={request.block_seconds:g}")
    chain_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    out = {"role": role, "point": point, "round": rnd, "member": member}
    timers: list[threading.Timer] = []
    away = {"chain": chain_dir, "store": run / "store"}.get(role)

    def take_away(job, head):  # an outage: the folder renamed away for OUTAGE_S seconds in round rnd
        if timers or job is None or head < job.schedule.round_start(rnd) + 1:
            return
        away.rename(away.with_name(away.name + ".away"))
        timers.append(threading.Timer(OUTAGE_S, away.with_name(away.name + ".away").rename, (away,)))
        timers[0].start()

    faults = {} if outage else {member: point + (f"@{rnd}" if rnd is not None else "")}
    try:
        record, net = run_local_network(plan, salt, faults=faults, restart_killed=True, timeout_s=600,
                                        on_block=take_away if outage else None)
    except Exception as exc:  # noqa: BLE001 (a trial that fails is the result being measured)
        return {**out, "survived": False, "fired": _fired(run, member) if not outage else bool(timers), "restarts": None,
                "seconds": round(time.perf_counter() - start, 1), "detail": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        for timer in timers:
            timer.join()
    problems = record_problems(record, ROUNDS, {m.hotkey for m in net.members if m.role == "miner"})
    problems += [f"corrupt object {line}" for line in corrupt_objects(LocalStore(run / "store"))]
    problems += double_publications(net.chain, net.job(), {m.hotkey for m in net.members if m.role == "validator"})
    fired = bool(timers) if outage else _fired(run, member)
    detail = "; ".join(problems) or (f"{record.accepted_rounds}/{ROUNDS} rounds adopted, held-out "
                                     f"{record.heldout_loss_before:.4f} → {record.heldout_loss_after:.4f}"
                                     + ("" if fired else "; the fault was never injected"))
    return {**out, "survived": not problems and fired, "fired": fired,
            "restarts": sum(net.restarts.values()) if outage else net.restarts.get(member, 0),
            "seconds": round(time.perf_counter() - start, 1), "detail": detail}


def _fired(run: Path, member: str) -> bool:
    folder = run / ("job" if member == "owner" else member)
    return any(e["event"] == "fault" for e in read_events(folder))


def _testbed_and_data(tmp: Path) -> tuple[Path, Path]:
    """The small testbed (built once, cached under $MOEFORGE_HOME) and the maths job as a JSON-lines file."""
    from moeforge.cli.settings import testbed_dir
    from moeforge.data.corpora import load_corpus
    from moeforge.testbed.build import build_testbed
    from moeforge.testbed.config import preset

    cfg = preset("small")
    model_dir = testbed_dir("small", cfg)
    build_testbed(cfg, model_dir)
    data_file = tmp / "maths.jsonl"
    data_file.write_text("".join(json.dumps({"prompt": r.prompt, "response": r.response}) + "\n"
                                 for r in load_corpus("math", "train")[:RECORDS]))
    return model_dir, data_file


def main(argv: list[str] | None = None) -> dict:
    run = Run(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help=f"default {DEFAULT_TRIALS}: every scenario twice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="a smoke run: one trial")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials = 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run_fault_trials(args.trials, args.seed)
    print(f"{'role':<10} {'point':<13} {'round':>5} {'fired':>5} {'restarts':>8} {'survived':>8} {'s':>6}  detail")
    for f in result["faults"]:
        print(f"{f['role']:<10} {f['point']:<13} {str(f['round'] if f['round'] is not None else '-'):>5} "
              f"{str(f['fired']):>5} {str(f['restarts']):>8} {str(f['survived']):>8} {f['seconds']:>6.1f}  {f['detail'][:90]}")
    print(f"survived {result['fault_trials_survived']}/{result['fault_trials']} fault trials (seed {args.seed})")
    return run.write(args.out, result)


if __name__ == "__main__":
    main()
