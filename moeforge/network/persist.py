"""Atomic JSON files in a role's run folder: a reader sees the old file or the new one, never half of one.

Issue 6 kills roles with SIGKILL at any instant; a role resumes from what these files hold. A write
goes to a temp file in the same folder, is flushed and fsynced, then `os.replace`d over the target
(atomic on POSIX), and the folder is fsynced so the rename itself survives a crash.
"""

import logging
import os
import tempfile
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from moeforge.errors import ConfigError
from moeforge.json_file import validation_problems

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically (temp file, fsync, rename, fsync the folder)."""
    return write_atomic_bytes(path, text.encode("utf-8"))


def write_atomic_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file, fsync, rename, fsync the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_model(path: Path, model: BaseModel) -> Path:
    """A pydantic model as indented JSON, atomically."""
    return write_atomic(path, model.model_dump_json(indent=2) + "\n")


def read_model(path: Path, model_class: type[M]) -> M | None:
    """The model stored at `path`, None if there is no file; ConfigError naming the file if it is not one."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return model_class.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, UnicodeDecodeError, OSError) as exc:  # OSError: e.g. a folder in the file's place
        problem = validation_problems(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ConfigError(
            f"{path}: not a valid {model_class.__name__} file ({problem}). "
            "It was written by another moeforge version or edited by hand; move it away to start afresh."
        ) from None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # fsync on a folder is unsupported there; nothing more to make durable
    finally:
        os.close(fd)
