"""The fault hook roles honour, a small documented test seam: SIGKILL a role at a named point.

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
               mid_upload (half the delta written to the store's temp file; for
               a store that uploads in one request, once it is sent), after_upload (the
               delta in the store, its reveal not yet on chain)
    validator  base_state, read_chain, fetch_check, score, mid_score (half the submissions scored),
               merge, mid_merge (the current state's merge loss known, the candidates not yet
               judged), publish, after_publish (the result on chain, state.json not yet written), weights

What a fault trial is judged by lives with the test harness (`harness/faults.py`), outside the package.
"""

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from moeforge.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "MOEFORGE_FAULT"
FIRED_FILE = "faults.fired"
POINTS: dict[str, tuple[str, ...]] = {
    "owner": ("prepare", "select", "upload", "publishing", "mid_job", "history", "evaluate", "recorded"),
    "miner": ("fetch", "load", "train", "mid_training", "after_commit", "mid_upload", "after_upload"),
    "validator": ("base_state", "read_chain", "fetch_check", "score", "mid_score", "merge", "mid_merge", "publish",
                  "after_publish", "weights"),
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
