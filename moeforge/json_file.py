"""Reading a JSON file a user can hand us (config, profile, manifest, saved state) into a pydantic model.

One reader, so every such file fails alike (STYLE.md §5): a missing file, a folder in its place, bytes
that are not UTF-8, JSON that does not parse (with line:column), a value that is not an object, and
every key pydantic refuses (wrong type, out of range, unknown, missing, another `version`), all in one
error that names the file and ends with what to do.
"""

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from moeforge.errors import ArtifactNotFound, ConfigError, MoeforgeError

M = TypeVar("M", bound=BaseModel)
_MAX_LISTED = 8  # problems named one by one; the rest are counted


def read_json_object(path: str | Path, *, what: str, fix: str, name: str | None = None,
                     error: type[MoeforgeError] = ConfigError) -> dict:
    """The JSON object in PATH; ArtifactNotFound if there is no file, ERROR for anything else wrong with it.

    WHAT names the kind of file ("expert config"); FIX says what to do; NAME prefixes the path (a flag).
    """
    path = Path(path)
    where = f"{name} {path}" if name else str(path)
    if not path.exists():
        raise ArtifactNotFound(f"{where}: no such {what} file. {fix}")
    if path.is_dir():
        raise error(f"{where}: is a folder; expected a JSON {what} file. {fix}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{where}: cannot read the {what} ({exc.strerror or exc}). Check the file's permissions.") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not a JSON {what} (byte {exc.start} is not UTF-8: a binary file?). {fix}") from None
    import json

    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not a JSON {what} (line {exc.lineno}, column {exc.colno}: {exc.msg}). {fix}") from None
    if not isinstance(raw, dict):
        raise error(f"{where}: expected a JSON object of {what} fields, got a JSON {type(raw).__name__}. {fix}")
    return raw


def read_json_model(path: str | Path, model_class: type[M], *, what: str, fix: str, name: str | None = None,
                    error: type[MoeforgeError] = ConfigError, mistaken: dict[str, frozenset[str]] | None = None) -> M:
    """PATH read as MODEL_CLASS; one error naming the file and every bad key (see `read_json_object`).

    MISTAKEN: other kinds of file a user may pass here instead ("routing profile" → keys only it has); a file
    with all of one kind's keys is named as that kind in one sentence, instead of listing every refused key.
    """
    raw = read_json_object(path, what=what, fix=fix, name=name, error=error)
    try:
        return model_class.model_validate(raw)
    except ValidationError as exc:
        where = f"{name} {path}" if name else str(path)
        for kind, keys in (mistaken or {}).items():
            if keys <= raw.keys():
                raise error(f"{where}: this is a {kind}, not a {what}. {fix}") from None
        raise error(f"{where}: not a valid {what}: {validation_problems(exc)}. {fix}") from None


def validation_problems(exc: ValidationError, rename: Callable[[tuple, object], str | None] | None = None) -> str:
    """Pydantic's problems as `key.path: message (got VALUE)`, the first few then a count.

    RENAME(location, input) gives a label to show instead of the key and value (e.g. `--seq-len 0`, a CLI flag
    and its value); where it gives None, the dotted key path and the value are shown.
    """
    parts = []
    for e in exc.errors():
        loc, given = tuple(e["loc"]), e.get("input")
        message = str(e["msg"]).removeprefix("Value error, ")
        where = rename(loc, given) if rename is not None else None
        if where is None:
            where = ".".join(map(str, loc))
            if loc and e["type"] != "missing" and not isinstance(given, (dict, list)):
                message += f" (got {shown(given)})"
        parts.append(f"{where}: {message}" if where else message)
    more = f"; … and {len(parts) - _MAX_LISTED} more" if len(parts) > _MAX_LISTED else ""
    return "; ".join(parts[:_MAX_LISTED]) + more


def shown(value: object, limit: int = 60) -> str:
    """repr(value), shortened to about LIMIT characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
