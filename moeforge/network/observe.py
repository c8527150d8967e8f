"""What a role tells the outside: one JSON line per event, and Prometheus metrics in its own registry.

STYLE.md §6. Each event goes to `events.jsonl` in the role's run folder (`{"t", "role", "hotkey",
"event", ...fields}`) and, as one readable line, to the logger. Metrics live in a per-process
(per-role) `CollectorRegistry`, so several roles in one process never share a counter; they are
written to `metrics.prom` in the run folder after each round (Prometheus text format, readable by
node_exporter's textfile collector) and, with a port, served over HTTP at `/metrics`.
Every metric a role may set is listed in `METRICS`, so the names are in one place.

An observer also carries the role's test hook (`faults.Fault`, issue 6): `reached(point)` is called at
each named point and on entering each phase, and kills the process there when the fault names it.
"""

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, write_to_textfile

from moeforge.errors import ConfigError
from moeforge.network.faults import Fault, already_fired, die, mark_fired

log = logging.getLogger(__name__)

Role = Literal["owner", "miner", "validator"]
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.prom"
_PHASE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)

METRICS: dict[str, tuple[type, str, tuple[str, ...]]] = {  # name → (kind, help, labels)
    "moeforge_round": (Gauge, "Round the role is working on (or finished last).", ()),
    "moeforge_phase_seconds": (Histogram, "Seconds spent in each step of a round.", ("phase",)),
    "moeforge_failures_total": (Counter, "Rounds or submissions that raised, by step; each is logged with its traceback.", ("step",)),
    "moeforge_miner_train_loss": (Gauge, "Mean training loss of the miner's last inner steps.", ()),
    "moeforge_miner_tokens_per_second": (Gauge, "Training throughput of the miner's last round.", ()),
    "moeforge_miner_delta_norm": (Gauge, "Global L2 norm of the miner's last delta.", ()),
    "moeforge_miner_submissions_total": (Counter, "Miner submissions by outcome: committed, revealed, missed_deadline, late_commit, late_reveal.", ("outcome",)),
    "moeforge_validator_verdicts_total": (Counter, "Submissions judged, by verdict: accepted or the reject reason.", ("verdict",)),
    "moeforge_validator_score": (Gauge, "Proof-of-Loss score of each miner in the latest round (0 if refused).", ("miner",)),
    "moeforge_validator_heldout_loss": (Gauge, "Held-out loss on the merge sample: the current state and the one adopted.", ("state",)),
    "moeforge_validator_merges_total": (Counter, "Round outcomes by choice: merged, single, none.", ("choice",)),
    "moeforge_validator_disagreements_total": (Counter, "Other validators' previous-round states that differ from this one's for the same base and seed.", ("validator",)),
    "moeforge_validator_weight": (Gauge, "Weight set on chain per miner uid.", ("uid",)),
    "moeforge_owner_heldout_loss": (Gauge, "Held-out loss of the job's expert state before and after the job.", ("when",)),
    "moeforge_owner_rounds_recorded": (Gauge, "Rounds in the job's history so far.", ()),
}


class Observer:
    """One role's event log and metrics; `run_dir=None` logs only (metrics still count in memory)."""

    def __init__(self, role: Role, hotkey: str, run_dir: Path | None = None, *, metrics_port: int | None = None,
                 fault: Fault | None = None):
        self.role, self.hotkey = role, hotkey
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.round: int | None = None  # the round the role is working on, for a fault's @round
        self.fault = fault if fault is not None and fault.role == role and not already_fired(fault, self.run_dir) else None
        self.registry = CollectorRegistry()
        self._metrics: dict[str, object] = {}
        self._server = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if metrics_port is not None:
            try:
                self._server, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=self.registry)
            except OSError as exc:
                raise ConfigError(
                    f"--metrics-port {metrics_port}: cannot serve metrics there ({exc.strerror}). "
                    "Pick a free port, or leave the option out."
                ) from None
            log.info("%s %s: metrics on http://127.0.0.1:%d/metrics", role, hotkey[:10], metrics_port)

    def metric(self, name: str):
        """The metric `name` from METRICS, created in this role's registry on first use."""
        if name not in self._metrics:
            kind, help_text, labels = METRICS[name]
            extra = {"buckets": _PHASE_BUCKETS} if kind is Histogram else {}
            self._metrics[name] = kind(name, help_text, labels, registry=self.registry, **extra)
        return self._metrics[name]

    def event(self, event: str, message: str | None = None, /, **fields) -> None:
        """Record one event: a JSON line in events.jsonl, and `message` (if any) as a log line."""
        if message:
            log.info("%s %s: %s", self.role, self.hotkey[:10], message)
        if self.run_dir is None:
            return
        line = {"t": round(time.time(), 3), "role": self.role, "hotkey": self.hotkey, "event": event, **fields}
        with open(self.run_dir / EVENTS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")

    def failure(self, step: str, round: int | None, exc: BaseException) -> None:
        """A step that raised: logged with its traceback, counted, and recorded as an event."""
        log.error("%s %s: %s failed in round %s: %s", self.role, self.hotkey[:10], step, round, exc, exc_info=exc)
        self.metric("moeforge_failures_total").labels(step=step).inc()
        self.event("failure", None, step=step, round=round, error=f"{type(exc).__name__}: {exc}")

    def reached(self, point: str) -> None:
        """The role is at `point`: if the fault hook names it (in this round), record it and SIGKILL this process."""
        if self.fault is None or not self.fault.matches(self.role, point, self.round):
            return
        log.warning("%s %s: fault hook %s (%s): killing this process with SIGKILL", self.role, self.hotkey[:10],
                    self.fault, "MOEFORGE_FAULT")
        self.event("fault", None, point=point, round=self.round, fault=str(self.fault), pid=os.getpid())
        mark_fired(self.fault, self.run_dir)
        die()

    @contextmanager
    def phase(self, name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
        """Time the block: observed in moeforge_phase_seconds{phase=name} and stored in `timings[name]`.
        Entering it is a fault point of the same name (`reached`)."""
        self.reached(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.metric("moeforge_phase_seconds").labels(phase=name).observe(seconds)
            if timings is not None:
                timings[name] = round(timings.get(name, 0.0) + seconds, 4)

    def flush_metrics(self) -> None:
        """Write metrics.prom in the run folder (atomically, as write_to_textfile does)."""
        if self.run_dir is not None:
            write_to_textfile(str(self.run_dir / METRICS_FILE), self.registry)

    def close(self) -> None:
        self.flush_metrics()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def read_events(run_dir: Path) -> list[dict]:
    """Every event a role recorded in `run_dir`, oldest first (for tests, `network up` and tools)."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
