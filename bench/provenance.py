"""Where a benchmark figure came from: the command, the git commit (and whether the tree was dirty), when, how long, on what.

Every bench script writes its JSON through `write_result`, so a committed figure can be traced to
the exact command line and commit that produced it, and re-run (README "Benchmarks").
"""

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROVENANCE_KEYS = ("command", "git_commit", "git_dirty", "started_at", "wall_seconds", "machine")


class Run:
    """Started when a benchmark starts; `write(path, result)` adds the provenance keys and writes the JSON."""

    def __init__(self, script: str, argv: list[str] | None = None):
        """SCRIPT: the bench's `__file__`; ARGV: its arguments (None: this process's command line)."""
        args = sys.argv[1:] if argv is None else list(argv)
        self.command = shlex.join([".venv/bin/python", _relative(Path(script)), *args])
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._start = time.perf_counter()
        self.git_commit, self.git_dirty = _git_state()  # the code that runs is the code at the start

    def provenance(self) -> dict:
        return {
            "command": self.command,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "started_at": self.started_at,
            "wall_seconds": round(time.perf_counter() - self._start, 1),
            "machine": machine(),
        }

    def write(self, path: Path, result: dict) -> dict:
        """RESULT with the provenance keys (they replace any of the same name), written to PATH as JSON."""
        provenance = self.provenance()
        if isinstance(result.get("machine"), dict):  # a bench's own machine facts (e.g. load average) are kept
            provenance["machine"] = {**provenance["machine"], **result["machine"]}
        result = {**result, **provenance}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {path} ({result['wall_seconds']:.0f} s, commit {result['git_commit'][:12]}"
              f"{' dirty' if result['git_dirty'] else ''})")
        return result


def machine() -> dict:
    """The machine a figure was measured on: CPU model and count, memory, torch threads, accelerator, OS."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_state() -> tuple[str, bool]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)
