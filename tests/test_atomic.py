"""Tests for moeforge/atomic.py: a write killed in the middle leaves the old file or folder, never half a new one."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from moeforge.atomic import previous_folder, write_bytes, write_file, write_folder, write_text

KILLED_FILE = """
import os, signal, sys
from pathlib import Path
from moeforge.atomic import write_file

def half_then_die(out):
    out.write(b"N" * 500)
    out.flush()
    os.fsync(out.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

write_file(Path(sys.argv[1]), half_then_die)
"""

KILLED_FOLDER = """
import os, signal, sys
from pathlib import Path
from moeforge.atomic import write_folder

def half_then_die(folder):
    (folder / "a.bin").write_bytes(b"new")
    if sys.argv[2] == "fill":
        os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[2] == "between-renames":  # killed after the old folder moved aside, before the new one moved in
    real = os.replace
    def replace(src, dst):
        real(src, dst)
        if str(dst).endswith(".old"):
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
write_folder(Path(sys.argv[1]), half_then_die)
"""


def _run_killed(script: str, *args) -> None:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_a_file_write_killed_half_way_leaves_the_old_bytes_and_only_a_hidden_temp_file(tmp_path):
    target = tmp_path / "state.json"
    write_bytes(target, b"O" * 1000)
    _run_killed(KILLED_FILE, target)
    assert target.read_bytes() == b"O" * 1000
    strays = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(strays) == 1 and strays[0].startswith(".state.json.") and (tmp_path / strays[0]).stat().st_size == 500
    write_text(target, "new\n")  # the next write goes through despite the stray
    assert target.read_text() == "new\n"


def test_a_file_write_killed_before_any_target_existed_leaves_no_target(tmp_path):
    target = tmp_path / "deep" / "x.bin"
    _run_killed(KILLED_FILE, target)
    assert not target.exists()


def test_a_check_that_refuses_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "obj"
    write_bytes(target, b"old")

    def refuse(temp):
        assert temp.read_bytes() == b"new" and temp.parent == tmp_path
        raise ValueError("bad bytes")

    with pytest.raises(ValueError, match="bad bytes"):
        write_file(target, lambda out: out.write(b"new"), check=refuse)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["obj"]


def test_read_only_files_are_installed_without_write_permission(tmp_path):
    target = write_file(tmp_path / "obj", lambda out: out.write(b"x"), read_only=True)
    assert target.stat().st_mode & 0o222 == 0


@pytest.mark.parametrize("when", ["fill", "between-renames"])
def test_a_folder_write_killed_leaves_the_old_folder_whole(tmp_path, when):
    target = tmp_path / "checkpoint"
    write_folder(target, lambda folder: (folder / "a.bin").write_bytes(b"old"))
    _run_killed(KILLED_FOLDER, target, when)
    kept = previous_folder(target)
    assert kept is not None and (kept / "a.bin").read_bytes() == b"old"
    assert kept.name == ("checkpoint" if when == "fill" else "checkpoint.old")
    write_folder(target, lambda folder: (folder / "a.bin").write_bytes(b"newer"))
    assert (target / "a.bin").read_bytes() == b"newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # the partial and old folders are gone


def test_a_folder_whose_fill_raises_leaves_nothing_new(tmp_path):
    def fail(folder):
        (folder / "a.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_folder(tmp_path / "slice", fail)
    assert list(tmp_path.iterdir()) == [] and previous_folder(tmp_path / "slice") is None


def test_no_other_module_renames_files_into_place():
    """The one durability rule lives in atomic.py: no other product module calls os.replace or Path.rename."""
    root = os.path.join(os.path.dirname(__file__), "..", "moeforge")
    offenders = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and name != "atomic.py":
                text = open(path, encoding="utf-8").read()
                if "os.replace(" in text or ".rename(" in text or "mkstemp(" in text:
                    offenders.append(os.path.relpath(path, root))
    assert offenders == []
