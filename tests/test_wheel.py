"""The installed wheel is the product: moeforge's own modules and data, no test or red-team harness."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_holds_moeforge_and_no_harness_tests_or_bench(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("moeforge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"moeforge", next(t for t in tops if t.endswith(".dist-info"))}, sorted(tops)
    modules = {name for name in names if name.endswith(".py")}
    assert "moeforge/network/miner.py" in modules and "moeforge/atomic.py" in modules
    harness = [n for n in modules if any(part in n for part in ("adversary", "inprocess", "overhead", "baselines"))]
    assert harness == []
    assert not any(n.startswith(("harness/", "tests/", "bench/")) for n in names)
