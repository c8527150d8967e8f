"""A real Customization Centre for tests and benchmarks: `moeforge service up` as a process on a free loopback port."""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_URL = re.compile(r"http://127\.0\.0\.1:(\d+)/ \(web UI\)")
_KEY = re.compile(r"(mfk_[0-9a-f]{24}_[A-Za-z0-9_-]{43})")


@dataclass
class Centre:
    root: Path
    model: Path
    env: dict
    args: list
    proc: subprocess.Popen | None = None
    url: str = ""
    key: str = ""  # the default tenant's admin key
    log: Path = field(default=None)

    @property
    def database(self) -> str:
        return self.env["MOEFORGE_CATALOG"]

    def start(self, timeout_s: float = 120.0) -> "Centre":
        self.log = self.root / f"service-{int(time.time() * 1000)}.out"
        out = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moeforge", "service", "up", "--port", "0", "--model", str(self.model),
                                      *self.args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if (m := _URL.search(text)) is not None:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                if (k := _KEY.search(text)) is not None and not self.key:
                    self.key = k.group(1)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"`moeforge service up` exited {self.proc.returncode}: {text[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"`moeforge service up` did not start in {timeout_s:.0f} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the service process (its worker and roles die with it)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "moeforge", *args], env=self.env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    def new_tenant(self, name: str) -> str:
        """A new tenant's admin key."""
        done = self.cli("service", "tenant", "add", name)
        assert done.returncode == 0, done.stderr + done.stdout
        return _KEY.search(done.stdout).group(1)

    def client(self, key: str | None = None):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or self.key, max_retries=0, timeout=60)

    def api_processes(self) -> list:
        """`service up` and the uvicorn processes it started with --api-workers (multiprocessing's spawned children)."""
        import psutil

        up = psutil.Process(self.proc.pid)
        return [up, *(c for c in up.children() if "spawn_main" in " ".join(c.cmdline()))]

    def worker(self):
        """The worker process (`service worker`); the job roles are its children."""
        import psutil

        return next(c for c in psutil.Process(self.proc.pid).children() if "worker" in c.cmdline())

    def worker_log(self) -> str:
        path = self.root / "home" / "service" / "worker.log"
        return path.read_text(errors="replace") if path.is_file() else ""


def centre(root: Path, model: Path, *, miners: int = 2, validators: int = 1, preset: str = "small",
           extra_args: tuple[str, ...] = ()) -> Centre:
    """A Centre (not started) whose home, database and library live under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MOEFORGE_HOME": str(root / "home"), "MOEFORGE_CATALOG": f"sqlite:///{root}/catalog.sqlite",
           "MOEFORGE_LIBRARY_STORE": str(root / "library-store"), "PYTHONUNBUFFERED": "1"}
    # the tests' jobs compete with the other tests' processes, not with API clients: they run at the tests' own
    # priority unless a test asks for the default (the restart test checks the niceness)
    nice = [] if "--worker-nice" in extra_args else ["--worker-nice", "0"]
    args = ["--preset", preset, "--miners", str(miners), "--validators", str(validators), *nice, *extra_args]
    return Centre(root, model, env, args)


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    """The first truthy value of predicate() within timeout_s; AssertionError naming `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
