"""The one way moeforge writes a file or a folder that must survive a crash: whole or not at all.

Every durable write (a role's state, a store object, a training checkpoint, an expert slice, a
testbed model) follows one rule: write into a temp entry in the same folder as the target, flush
and fsync what was written, rename it over the target (atomic on POSIX), then fsync the folder so
the rename itself survives a power cut. A process killed at any instant leaves the old target or
the new one, never half of one; what it leaves behind is a temp entry that readers skip (its name
starts with a dot) and the next write of the same target clears.

A folder cannot be renamed over another, so `write_folder` moves the old one aside to
`<name>.old` first; `previous_folder` names where a crash between the two renames leaves it.
"""

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

OLD_SUFFIX = ".old"
PARTIAL_SUFFIX = ".partial"


def write_file(
    path: Path,
    write: Callable[[BinaryIO], object],
    *,
    check: Callable[[Path], object] | None = None,
    read_only: bool = False,
    temp_prefix: str | None = None,
) -> Path:
    """Write `path` atomically: `write(out)` fills a temp file beside it, which is fsynced, then `check(temp)`
    (which may raise to refuse it), made read-only if asked, renamed into place and the folder fsynced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temp_prefix or f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        if check is not None:
            check(temp)
        if read_only:
            os.chmod(temp, 0o444)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)  # a killed process skips this; the dot-named temp file stays invisible
        raise
    fsync_folder(path.parent)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """`data` at `path`, atomically."""
    return write_file(path, lambda out: out.write(data))


def write_text(path: Path, text: str) -> Path:
    """`text` (UTF-8) at `path`, atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_folder(path: Path, fill: Callable[[Path], object]) -> Path:
    """Write the folder `path` atomically: `fill(temp)` writes its files into `<name>.partial` beside it; every
    file is fsynced, the old folder (if any) is renamed to `<name>.old`, the new one into place, the old removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp, old = path.with_name(path.name + PARTIAL_SUFFIX), path.with_name(path.name + OLD_SUFFIX)
    shutil.rmtree(temp, ignore_errors=True)  # what an earlier killed write left
    temp.mkdir()
    try:
        fill(temp)
        _fsync_tree(temp)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(temp, path)
    fsync_folder(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def previous_folder(path: Path) -> Path | None:
    """`path` if it is a folder; else where `write_folder` moved the previous one when killed between its
    renames (`<name>.old`), if that exists; else None."""
    path = Path(path)
    if path.is_dir():
        return path
    old = path.with_name(path.name + OLD_SUFFIX)
    return old if old.is_dir() else None


def fsync_folder(folder: Path) -> None:
    """Make renames in `folder` durable (POSIX; nothing to do where folders cannot be opened or synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        for name in files:
            with open(Path(root) / name, "rb+") as f:
                os.fsync(f.fileno())
        fsync_folder(Path(root))
