"""Fault injection for issue 6, a test hook: SIGKILL a role at a named point, and what a survivor must show.

A role is crash-safe when a SIGKILL at any instant, followed by a restart with the same command,
wallet and run folder, loses nothing: the job still ends with a valid record, and no half-written
object is ever readable. To test that deterministically, `MOEFORGE_FAULT=<role>:<point>[@<round>]`
(read once by the CLI's settings, passed down as a `Fault`) makes the role kill itself with SIGKILL
when it first reaches `point` (in `round`, if given). Before dying it appends the fault to
`faults.fired` in its run folder, so the same process restarted with the same environment does not
fire it again, and records a `fault` event. Points (every phase of `Observer.phase` is one, killed on
entering it; the rest are named where the role reaches them):

    owner      prepare, select, upload, publishing (job.json written, job not yet on chain), mid_job
               (waiting for the rounds; with @r, once round r has started), history, evaluate,
               recorded (record in the store, result.json not yet written)
    miner      fetch, load, train, mid_training (half the inner steps done), after_commit,
               mid_upload (half the delta written to the store's temp file), after_upload (the
               delta in the store, its reveal not yet on chain)
    validator  base_state, read_chain, fetch_check, score, merge, publish, after_publish (the
               result on chain, state.json not yet written), weights

`corrupt_objects` and `record_problems` are what a fault trial is judged by (tests, bench/faults.py).
"""

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from moeforge.errors import ConfigError
from moeforge.store.protocol import Store, sha256_hex

log = logging.getLogger(__name__)

ENV = "MOEFORGE_FAULT"
FIRED_FILE = "faults.fired"
POINTS: dict[str, tuple[str, ...]] = {
    "owner": ("prepare", "select", "upload", "publishing", "mid_job", "history", "evaluate", "recorded"),
    "miner": ("fetch", "load", "train", "mid_training", "after_commit", "mid_upload", "after_upload"),
    "validator": ("base_state", "read_chain", "fetch_check", "score", "merge", "publish", "after_publish", "weights"),
}


@dataclass(frozen=True)
class Fault:
    """Kill this process with SIGKILL when `role` reaches `point` (in `round`, or in any round)."""

    role: str
    point: str
    round: int | None = None

    def __str__(self) -> str:
        return f"{self.role}:{self.point}" + (f"@{self.round}" if self.round is not None else "")

    def matches(self, role: str, point: str, round: int | None) -> bool:
        return role == self.role and point == self.point and (self.round is None or self.round == round)


def parse_fault(text: str | None, *, source: str = ENV) -> Fault | None:
    """`role:point[@round]` → Fault; None for an empty value; ConfigError naming `source` and the known points."""
    if not text or not text.strip():
        return None
    spec, _, round_text = text.strip().partition("@")
    role, _, point = spec.partition(":")
    problems = []
    if role not in POINTS:
        problems.append(f"role {role!r} is not one of {', '.join(POINTS)}")
    elif point not in POINTS[role]:
        problems.append(f"{role} has no fault point {point!r} (it has {', '.join(POINTS[role])})")
    if round_text and not (round_text.isdigit()):
        problems.append(f"round {round_text!r} is not a whole number ≥ 0")
    if problems:
        raise ConfigError(f"{source}={text!r}: " + "; ".join(problems) + ". Expected role:point[@round], e.g. "
                          "miner:mid_upload@0; unset it to run without a fault.")
    return Fault(role, point, int(round_text) if round_text else None)


def already_fired(fault: Fault, run_dir: Path | None) -> bool:
    """Whether this run folder's process has fired `fault` before (a restart does not fire it again)."""
    if run_dir is None or not (Path(run_dir) / FIRED_FILE).is_file():
        return False
    return str(fault) in (Path(run_dir) / FIRED_FILE).read_text(encoding="utf-8").split()


def mark_fired(fault: Fault, run_dir: Path | None) -> None:
    """Note the fault in the run folder, durably, before the process dies of it."""
    if run_dir is None:
        return
    with open(Path(run_dir) / FIRED_FILE, "a", encoding="utf-8") as f:
        f.write(f"{fault}\n")
        f.flush()
        os.fsync(f.fileno())


def die() -> None:
    """SIGKILL this process: no handler, no cleanup, no `finally` (what a crash or the OOM killer does)."""
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


def put_half_then_die(store: Store, data: bytes) -> None:
    """Die in the middle of uploading `data`: for a folder store, inside its own atomic install, after half the
    bytes reached the temp file (what a kill during a large write leaves); for any other store, before the put."""
    install = getattr(store, "_install", None)  # LocalStore's temp-file-then-rename writer
    if install is None:
        die()

    def write_half(out) -> None:
        out.write(data[: len(data) // 2])
        out.flush()
        os.fsync(out.fileno())
        die()

    install(sha256_hex(data), write_half)


def corrupt_objects(store: Store) -> list[str]:
    """Every object in `store` whose bytes do not hash to its name (a partial or flipped object a reader could see)."""
    bad = []
    for digest in store.digests():
        try:
            store.get(digest)  # re-hashes the bytes; StoreError if they do not match
        except Exception as exc:  # noqa: BLE001 (a scan reports every unreadable object and goes on)
            bad.append(f"{digest}: {exc}")
    return bad


def record_problems(record, rounds: int, miners: set[str]) -> list[str]:
    """What is wrong with a finished job's `JobRecord` (empty when it is valid): every round recorded, the
    contributions going to miners and summing to 1, and the held-out loss lower after the job than before."""
    problems = []
    if record is None:
        return ["no record was written"]
    if [e.round for e in record.rounds] != list(range(rounds)):
        problems.append(f"rounds recorded {[e.round for e in record.rounds]}, expected 0..{rounds - 1}")
    if not set(record.contributions) <= miners:
        problems.append(f"contributions credit non-miners {sorted(set(record.contributions) - miners)}")
    total = sum(record.contributions.values())
    if abs(total - 1.0) > 1e-6:
        problems.append(f"contributions sum to {total:.6f}, not 1")
    if not record.heldout_loss_after < record.heldout_loss_before:
        problems.append(f"held-out loss {record.heldout_loss_before:.4f} → {record.heldout_loss_after:.4f} did not fall")
    return problems
