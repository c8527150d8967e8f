"""Benchmark: kill -9 a role at a random point of a real local network, restart it, and check the job survives.

Issue 6. Each trial starts a fresh local network (owner, two miners, one validator, two rounds of 1-second
blocks on the small testbed), arms one fault drawn with a seeded RNG from every (role, point) the fault hook
knows (moeforge/network/faults.py; miners die the first time they reach the point, the validator and the
owner's `mid_job` in a drawn round), restarts the killed role with its exact command, and judges the
outcome: a trial survives when the job ends with a valid record (every round recorded, contributions summing
to 1, held-out loss lower after than before) and every object in the store re-hashes to its name.
`bench/attacks.py` calls `run_fault_trials` for its fault columns. Prints a table and writes
bench/results/faults.json.

    .venv/bin/python bench/faults.py [--trials 6] [--seed 0] [--quick]
"""

import argparse
import json
import logging
import random
import tempfile
import sys
import time
from pathlib import Path

from moeforge.network.faults import POINTS
from moeforge.network.local import NetworkPlan, run_local_network
from moeforge.network.observe import read_events
from moeforge.store.local import LocalStore

from provenance import Run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: harness/ sits beside bench/
from harness.faults import corrupt_objects, record_problems

RESULTS = Path(__file__).parent / "results" / "faults.json"
ROUNDS = 2
RECORDS = 600  # of GSM8K's train split, as the network tests use
ROUND_POINTS = {"validator", "owner:mid_job"}  # fault points that fire in a drawn round (the rest: first time reached)


def run_fault_trials(trials: int, seed: int) -> dict:
    """`trials` fault trials drawn with `seed` → {"fault_trials", "fault_trials_survived", "faults": [{"role",
    "point", "survived", "detail", ...}], ...}."""
    rng = random.Random(seed)
    drawn = [(role, point) for role, points in POINTS.items() for point in points]
    faults = []
    with tempfile.TemporaryDirectory(prefix="moeforge-faults-") as tmp:
        model_dir, data_file = _testbed_and_data(Path(tmp))
        for trial in range(trials):
            role, point = rng.choice(drawn)
            rnd = rng.randrange(ROUNDS) if role in ROUND_POINTS or f"{role}:{point}" in ROUND_POINTS else None
            member = {"owner": "owner", "validator": "validator-0", "miner": f"miner-{rng.randrange(2)}"}[role]
            salt = f"fault-trial-{seed}-{trial}"  # the held-out split, drawn per trial and reproducible
            faults.append(_trial(Path(tmp) / f"trial-{trial}", model_dir, data_file, member, role, point, rnd, salt))
    return {
        "fault_trials": len(faults),
        "fault_trials_survived": sum(f["survived"] for f in faults),
        "faults": faults,
        "seed": seed,
        "rounds": ROUNDS,
    }


def _trial(run: Path, model_dir: Path, data_file: Path, member: str, role: str, point: str, rnd: int | None,
           salt: str) -> dict:
    from moeforge.network.owner import JobRequest
    from moeforge.train.config import TrainConfig

    request = JobRequest(
        job_id="maths-fault-trial", base_model=str(model_dir), domain="maths.jsonl", heldout=0.2, rounds=ROUNDS,
        inner_steps=10, train=TrainConfig(lr=1e-2, batch_size=8, warmup_steps=1, weight_decay=0.0, checkpoint_every=0),
        profile_tokens=4096, score_rows=16, merge_rows=16, eval_batch_rows=8, report_rows=32, block_seconds=1.0,
        train_blocks=8, commit_blocks=2, reveal_blocks=3, score_blocks=12, start_delay_blocks=4,
    )
    plan = NetworkPlan(run_dir=run, request=request, data=str(data_file),
                       data_options={"prompt_field": "prompt", "response_field": "response"},
                       miner_modes=("full", "full"), validator_stakes=(100.0,))
    fault = point + (f"@{rnd}" if rnd is not None else "")
    start = time.perf_counter()
    out = {"role": role, "point": point, "round": rnd, "member": member}
    try:
        record, net = run_local_network(plan, salt, faults={member: fault}, restart_killed=True,
                                        timeout_s=400)
    except Exception as exc:  # noqa: BLE001 (a trial that fails is the result being measured)
        return {**out, "survived": False, "fired": _fired(run, member), "restarts": None,
                "seconds": round(time.perf_counter() - start, 1), "detail": f"{type(exc).__name__}: {exc}"[:500]}
    problems = record_problems(record, ROUNDS, {m.hotkey for m in net.members if m.role == "miner"})
    problems += [f"corrupt object {line}" for line in corrupt_objects(LocalStore(run / "store"))]
    fired = _fired(run, member)
    detail = "; ".join(problems) or (f"{record.accepted_rounds}/{ROUNDS} rounds adopted, held-out "
                                     f"{record.heldout_loss_before:.4f} → {record.heldout_loss_after:.4f}"
                                     + ("" if fired else "; the fault point was never reached"))
    return {**out, "survived": not problems, "fired": fired, "restarts": net.restarts.get(member, 0),
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
    parser.add_argument("--trials", type=int, default=6)
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
