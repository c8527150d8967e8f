"""A role's state as JSON files in its run folder: a reader sees the old file or the new one, never half of one.

Roles may be killed with SIGKILL at any instant; a role resumes from what these files hold. Each is
written by `moeforge.atomic` (temp file, fsync, rename, fsync the folder).
"""

import logging
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from moeforge.atomic import write_text
from moeforge.errors import ConfigError
from moeforge.json_file import validation_problems

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def write_model(path: Path, model: BaseModel) -> Path:
    """A pydantic model as indented JSON, atomically."""
    return write_text(path, model.model_dump_json(indent=2) + "\n")


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
