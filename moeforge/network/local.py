"""A whole network on this machine: one chain, one store, wallets, and real `moeforge` role processes.

What `moeforge network up` and `moeforge demo` run. `start_local_network` creates (or re-opens)
the chain and the store (embedded under the run folder by default), writes a btcli wallet per
role, registers every hotkey and stakes the validators, then starts one process per role
(`python -m moeforge owner run | miner run | validator run`), each with its own run folder and
log. `LocalNetwork.wait` follows the chain until the owner has written the job's record. The
processes talk only through the chain and the store; the salt reaches the owner and the
validators through their environment, never a command line.

The embedded chain runs lock-step (`chain/local.py`): a block passes once every role has said it is
idle until a later block, so a role on a busy machine never misses a deadline and a tight schedule
(`LOCKSTEP_SCHEDULE`) is as safe as a wide one; the job's `block_seconds` is the chain's ceiling, the
longest a block waits for a busy or dead role before it passes anyway.

Issue 6: `kill(name)` ends a role with SIGKILL, `restart(name)` runs its exact command again with the
same environment, wallet and run folder, and `wait(restart_killed=True)` restarts any role that died of
SIGKILL, as a process supervisor would. `start_local_network(faults={"miner-0": "mid_upload@0"})` arms
the fault hook (`faults.py`, `MOEFORGE_FAULT`) in one role's environment; it fires once per run folder.

Run folder:

    <run>/chain.sqlite, <run>/store/       the embedded chain and store (unless URLs are given)
    <run>/wallets/<role>/                  btcli wallets: owner, miner-0…, validator-0…
    <run>/request.json                     the owner's JobRequest
    <run>/network.json                     who is who: role → hotkey, mode or stake, run folder
    <run>/job/                             the owner: job.json, job.digest, result.json, events.jsonl, metrics.prom
    <run>/miner-<i>/, <run>/validator-<j>/ each role: events.jsonl, metrics.prom (validators: state.json, rounds/)
    <run>/<role>/process.log               the role process's own output
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from moeforge.atomic import write_text
from moeforge.errors import ConfigError, RoleFailed
from moeforge.extract.package import MinerMode
from moeforge.network.faults import ENV as FAULT_ENV
from moeforge.network.faults import parse_fault
from moeforge.network.history import RESULT_FILE, JobRecord
from moeforge.network.job import JobSpec
from moeforge.network.observe import read_events
from moeforge.network.owner import JOB_FILE, JobRequest
from moeforge.network.persist import read_model, write_model

log = logging.getLogger(__name__)

LOG_FILE = "process.log"
STOP_GRACE_S = 10.0
MAX_RESTARTS = 5  # per role, under wait(restart_killed=True): a role killed over and over is a failure
# What `network up` and `demo` run a job with on their lock-step chain: every phase as short as its rules allow
# (a commitment lands in the block after the head), and a ceiling of a minute for a block nobody lets pass.
LOCKSTEP_SCHEDULE = {"block_seconds": 60.0, "start_delay_blocks": 4, "train_blocks": 2, "commit_blocks": 2,
                     "reveal_blocks": 2, "score_blocks": 3}
_PUBLISH_TIMEOUT_S = 900.0  # the owner profiles and selects before the job exists


class NetworkPlan(BaseModel):
    """What to start: the job, the roles, and where the chain and the store are."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    run_dir: Path
    request: JobRequest
    data: str  # --data for the owner and the validators: a corpus name or a file path
    data_options: dict[str, str] = Field(default_factory=dict)  # prompt_field, response_field, text_field
    miner_modes: tuple[MinerMode, ...] = Field(min_length=1)
    validator_stakes: tuple[float, ...] = Field(min_length=1)
    chain_url: str | None = None  # None: a lock-step local:///<run>/chain.sqlite, its ceiling the request's block_seconds
    store_url: str | None = None  # None: a folder store at <run>/store
    metrics_port: int | None = None  # first port; the roles take consecutive ones
    device: str = "cpu"  # --device of every role (auto, cpu, cuda, cuda:N)
    experts: Path | None = None  # the owner's --experts (a `moeforge select` output); None: the owner selects
    python: str = sys.executable


@dataclass(frozen=True)
class Member:
    name: str  # owner, miner-0, validator-1 …
    role: str  # owner | miner | validator
    hotkey: str
    run_dir: Path
    mode: str | None = None  # miners
    stake: float | None = None  # validators


@dataclass
class LocalNetwork:
    """The started processes of a local network; stop them with `stop`."""

    plan: NetworkPlan
    chain: object
    chain_url: str
    store_url: str
    members: list[Member]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)  # name → (argv, environment)
    restarts: dict[str, int] = field(default_factory=dict)  # name → times restarted

    @property
    def owner(self) -> Member:
        return self.members[0]

    def names(self) -> dict[str, str]:
        """hotkey → readable label, e.g. 'miner-1 (quantized)'."""
        return {m.hotkey: m.name + (f" ({m.mode})" if m.mode else "") for m in self.members}

    def job(self) -> JobSpec | None:
        """The job the owner published, once it has."""
        return read_model(self.owner.run_dir / JOB_FILE, JobSpec)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise ConfigError(f"no role {name!r} in the local network in {self.plan.run_dir}; it has "
                          f"{', '.join(m.name for m in self.members)}.")

    def kill(self, name: str) -> int:
        """End role `name` with SIGKILL, at whatever it is doing, and reap it; → its exit status (−9)."""
        proc = self.procs[self.member(name).name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        log.info("killed %s (pid %d) with SIGKILL", name, proc.pid)
        return code

    def restart(self, name: str) -> subprocess.Popen:
        """Run role `name`'s exact command again (same wallet, run folder and environment); it must have exited."""
        member = self.member(name)
        old = self.procs[name]
        if old.poll() is None:
            raise RoleFailed(f"{name} (pid {old.pid}) is still running; kill it before restarting it.")
        command, env = self.commands[name]
        self.procs[name] = _start(self.plan, member, command, env)
        self.restarts[name] = self.restarts.get(name, 0) + 1
        log.warning("restarted %s (pid %d, exit status %s before; restart %d)", name, self.procs[name].pid, old.returncode,
                    self.restarts[name])
        return self.procs[name]

    def wait(self, *, on_block: Callable[[JobSpec | None, int], None] | None = None, poll_s: float = 0.5,
             timeout_s: float | None = None, restart_killed: bool = False) -> JobRecord:
        """Follow the chain until the owner has written the record; RoleFailed if any role exits with an error,
        or if the job is not done within `timeout_s` (default: what its schedule implies, generously).
        `restart_killed`: a role that died of SIGKILL is restarted (up to MAX_RESTARTS times) instead."""
        job, deadline = None, time.monotonic() + (timeout_s or _PUBLISH_TIMEOUT_S)
        while self.procs["owner"].poll() != 0:
            if restart_killed:
                self._restart_killed()
            self._check_processes()
            head = self.chain.block()
            if job is None and (job := self.job()) is not None and timeout_s is None:  # the job's schedule sets the limit
                deadline = time.monotonic() + job.wait_s(job.schedule.round_end(job.last_round) - head) + 300
            if on_block is not None:
                on_block(job, head)
            if time.monotonic() > deadline:
                raise RoleFailed(f"the local network in {self.plan.run_dir} did not finish in time (chain at block {head}); "
                                 f"see each role's {LOG_FILE} there.")
            time.sleep(poll_s)
        record = read_model(self.owner.run_dir / RESULT_FILE, JobRecord)
        if record is None:
            raise RoleFailed(f"the owner exited without writing {self.owner.run_dir / RESULT_FILE}; see its {LOG_FILE}.")
        self._let_roles_finish(timeout_s=30.0, restart_killed=restart_killed)
        return record

    def phase_timings(self) -> dict[int, dict[str, dict[str, float]]]:
        """round → role name → seconds per step, from each role's events (miners: fetch, load, train;
        validators: base_state, read_chain, fetch_check, score, merge, publish, weights)."""
        out: dict[int, dict[str, dict[str, float]]] = {}
        for m in self.members:
            for event in read_events(m.run_dir):
                if event["event"] in ("trained", "scored"):
                    out.setdefault(event["round"], {})[m.name] = event["timings"]
        return out

    def stop(self) -> None:
        """Terminate every role process still running (SIGTERM, then SIGKILL after a grace period)."""
        running = {name: p for name, p in self.procs.items() if p.poll() is None}
        for p in running.values():
            p.terminate()
        for name, p in running.items():
            try:
                p.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop in %.0f s; killing it", name, p.pid, STOP_GRACE_S)
                p.kill()
                p.wait()

    def _restart_killed(self) -> None:
        for name, p in list(self.procs.items()):
            if self._restartable(name, p):
                self.restart(name)

    def _restartable(self, name: str, p: subprocess.Popen) -> bool:
        return p.poll() == -signal.SIGKILL and self.restarts.get(name, 0) < MAX_RESTARTS

    def _check_processes(self) -> None:
        for name, p in self.procs.items():
            code = p.poll()
            if code not in (None, 0):
                member = next(m for m in self.members if m.name == name)
                raise RoleFailed(f"{name} exited with status {code}: {_tail(member.run_dir / LOG_FILE)} "
                                 f"(full log: {member.run_dir / LOG_FILE})")

    def _let_roles_finish(self, timeout_s: float, restart_killed: bool = False) -> None:
        """Give the other roles `timeout_s` to finish once the record is written (restarting killed ones if asked)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if restart_killed:
                self._restart_killed()
            done = [p.poll() is not None and not (restart_killed and self._restartable(name, p)) for name, p in self.procs.items()]
            if all(done):
                break
            time.sleep(0.2)
        for name, p in self.procs.items():
            if p.poll() is None:
                log.warning("%s is still running after the job's record was written; stopping it", name)
        self._check_processes()


def start_local_network(plan: NetworkPlan, salt: str, *, credentials: tuple[str, str] | None = None,
                        faults: dict[str, str] | None = None) -> LocalNetwork:
    """Set up the chain, the store and the wallets, then start every role process (module docstring).

    `credentials` (S3 access key, secret key) reach the roles through their environment; `faults` (role name →
    `point[@round]`, a test hook) through the environment of that role only.
    """
    from moeforge.chain.keys import create_wallet, load_wallet
    from moeforge.chain.open import open_chain
    from moeforge.store.open import open_store

    run = plan.run_dir.resolve()
    run.mkdir(parents=True, exist_ok=True)
    chain_url = plan.chain_url or f"local://{run / 'chain.sqlite'}?lockstep_s={plan.request.block_seconds:g}"
    store_url = plan.store_url or (run / "store").as_uri()
    chain = open_chain(chain_url)
    if not hasattr(chain, "register"):
        raise ConfigError(f"--chain {chain_url}: `network up` registers and stakes its own hotkeys, which needs a local chain "
                          "(local:///path/chain.sqlite). On Bittensor, start each role with `moeforge owner|miner|validator run`.")
    open_store(store_url, credentials=credentials)  # fail early on a bad store URL

    def wallet(name: str):
        path = run / "wallets"
        if (path / name / "hotkeys" / "default").exists():
            return load_wallet(name, "default", path)
        return create_wallet(name, "default", path)

    members = [Member("owner", "owner", wallet("owner").hotkey.ss58_address, run / "job")]
    members += [Member(f"miner-{i}", "miner", wallet(f"miner-{i}").hotkey.ss58_address, run / f"miner-{i}", mode=mode)
                for i, mode in enumerate(plan.miner_modes)]
    members += [Member(f"validator-{j}", "validator", wallet(f"validator-{j}").hotkey.ss58_address, run / f"validator-{j}",
                       stake=stake) for j, stake in enumerate(plan.validator_stakes)]
    for m in members:
        chain.register(m.hotkey)
        have = chain.metagraph().by_hotkey(m.hotkey).stake
        if m.stake is not None and have < m.stake:
            chain.add_stake(m.hotkey, m.stake - have)
    write_model(run / "request.json", plan.request)
    write_text(run / "network.json", json.dumps({"chain": chain_url, "store": store_url, "members": [
        {"name": m.name, "role": m.role, "hotkey": m.hotkey, "run": str(m.run_dir), "mode": m.mode, "stake": m.stake}
        for m in members]}, indent=2) + "\n")
    net = LocalNetwork(plan, chain, chain_url, store_url, members)
    armed = _armed_faults(net, faults or {})
    child_env = {**os.environ, "MOEFORGE_DATA_SALT": salt, "PYTHONUNBUFFERED": "1"}
    child_env.pop(FAULT_ENV, None)  # only the roles `faults` names get one
    child_env.setdefault("OMP_NUM_THREADS", "1")  # several roles share the cores; OpenMP spin-waits otherwise
    if credentials is not None:
        child_env.update(MOEFORGE_S3_ACCESS_KEY=credentials[0], MOEFORGE_S3_SECRET_KEY=credentials[1])
    try:
        for k, m in enumerate(members):
            env = {**child_env, FAULT_ENV: armed[m.name]} if m.name in armed else child_env
            net.commands[m.name] = (_command(plan, m, net, k), env)
            net.procs[m.name] = _start(plan, m, *net.commands[m.name])
    except BaseException:
        net.stop()
        raise
    log.debug("local network in %s: %d miners, %d validators, chain %s, store %s", run, len(plan.miner_modes),
             len(plan.validator_stakes), chain_url, store_url)
    return net


def run_local_network(plan: NetworkPlan, salt: str, *, credentials: tuple[str, str] | None = None,
                      on_block: Callable[[JobSpec | None, int], None] | None = None,
                      timeout_s: float | None = None, faults: dict[str, str] | None = None,
                      restart_killed: bool = False, poll_s: float = 0.5) -> tuple[JobRecord, LocalNetwork]:
    """Start a local network, follow it to the job's record, and stop every process (also on Ctrl-C).
    `faults` and `restart_killed`: see `start_local_network` and `LocalNetwork.wait`."""
    net = start_local_network(plan, salt, credentials=credentials, faults=faults)
    try:
        return net.wait(on_block=on_block, timeout_s=timeout_s, restart_killed=restart_killed, poll_s=poll_s), net
    finally:
        net.stop()


def prune_runs(folder: Path, keep: int) -> list[Path]:
    """Remove all but the newest KEEP run folders in FOLDER (those holding a network.json, by its time); → what went.
    Anything else in FOLDER is left alone."""
    import shutil

    if keep < 0:
        raise ConfigError(f"--keep {keep}: expected a number of run folders ≥ 0.")
    runs = sorted((p for p in Path(folder).glob("*") if (p / "network.json").is_file()),
                  key=lambda p: (p / "network.json").stat().st_mtime, reverse=True)
    gone = runs[keep:]
    for run in gone:
        shutil.rmtree(run)
        log.debug("removed the old run folder %s", run)
    return gone


def _armed_faults(net: LocalNetwork, faults: dict[str, str]) -> dict[str, str]:
    """Role name → the MOEFORGE_FAULT value for it, checked (ConfigError naming the bad one)."""
    armed = {}
    for name, point in faults.items():
        member = net.member(name)
        value = f"{member.role}:{point}"
        parse_fault(value, source=f"fault for {name}")
        armed[name] = value
    return armed


def _command(plan: NetworkPlan, m: Member, net: LocalNetwork, k: int) -> list[str]:
    wallet = ["--wallet", m.name, "--wallet-path", str(net.plan.run_dir.resolve() / "wallets")]
    where = ["--run", str(m.run_dir), "--store", net.store_url, "--chain", net.chain_url]
    if plan.metrics_port is not None:
        where += ["--metrics-port", str(plan.metrics_port + k)]
    data = ["--data", plan.data] + [arg for name, value in plan.data_options.items() for arg in (f"--{name.replace('_', '-')}", value)]
    base = [plan.python, "-m", "moeforge"]
    where += ["--device", plan.device]
    if m.role == "owner":
        experts = ["--experts", str(plan.experts)] if plan.experts is not None else []
        return [*base, "owner", "run", *wallet, *where, "--model", plan.request.base_model, *data, *experts,
                "--config", str(plan.run_dir.resolve() / "request.json")]
    if m.role == "miner":
        return [*base, "miner", "run", *wallet, *where, "--owner", net.owner.hotkey, "--mode", m.mode]
    return [*base, "validator", "run", *wallet, *where, "--owner", net.owner.hotkey, *data]


def die_with_parent() -> None:
    """In a child before exec: SIGKILL it when the thread that started it dies (Linux's PR_SET_PDEATHSIG), so no role
    outlives a supervisor killed with SIGKILL, and one started again never finds the old roles still running."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: roles are stopped by `stop` only
        pass


def _start(plan: NetworkPlan, m: Member, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    m.run_dir.mkdir(parents=True, exist_ok=True)
    with open(m.run_dir / LOG_FILE, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=die_with_parent)
    log.debug("started %s (pid %d): %s", m.name, proc.pid, " ".join(command))
    return proc


def _tail(path: Path, lines: int = 3) -> str:
    """The last error-looking lines of a role's log, for the message that names the failure."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    errors = [line.strip() for line in text if "error" in line.lower()]
    return " | ".join((errors or text)[-lines:])
