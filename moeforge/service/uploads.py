"""A multipart upload streamed to a temporary file, chunk by chunk: the body is never held whole in memory.

`receive_upload` parses `multipart/form-data` with python-multipart's streaming parser, writes the
`file` part to a file under the uploads folder while hashing it, keeps the small text fields
(`purpose`), and stops at the size limit with a 413. The caller moves the file into the store and
only then inserts its row, so an upload cut off midway is never visible as a file.
"""

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from moeforge.service.errors import APIError

MAX_FIELD_BYTES = 1024  # a text field of the form (purpose); the file is the only large part
SUFFIXES = (".jsonl", ".json", ".csv", ".txt", ".md", ".parquet")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,199}")


@dataclass
class Upload:
    path: Path  # the temporary file, removed by the caller
    filename: str
    bytes: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)


def check_filename(name: str | None) -> str:
    """The upload's file name, refused (400, param `file`) if it could name a path or its format is unknown."""
    if not name:
        raise APIError(400, "the `file` part has no filename; send it as a file (multipart with filename=…)", param="file")
    if "/" in name or "\\" in name or name in (".", "..") or ".." in name or "\x00" in name:
        raise APIError(400, f"file name {name!r}: a name, not a path (no '/', '\\' or '..')", param="file", code="bad_filename")
    if not _SAFE_NAME.fullmatch(name):
        raise APIError(400, f"file name {name!r}: use letters, digits, spaces and . _ ( ) + - (at most 200), starting "
                       "with a letter or digit", param="file", code="bad_filename")
    if not name.lower().endswith(SUFFIXES):
        raise APIError(400, f"file name {name!r}: cannot tell its format; name it with one of {', '.join(SUFFIXES)}",
                       param="file", code="unknown_format")
    return name


async def receive_upload(request: Request, folder: Path, limit: int) -> Upload:
    """Stream the request's multipart body into a temporary file in `folder` (module docstring)."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise APIError(415, "expected a multipart/form-data body with a `file` part and a `purpose` field",
                       param="Content-Type", code="unsupported_media_type")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + 64 * 1024:
        raise APIError(413, f"the upload is {int(length):,} bytes; the limit is {limit:,}", param="file", code="file_too_large")
    folder.mkdir(parents=True, exist_ok=True)
    out = tempfile.NamedTemporaryFile(dir=folder, prefix="upload-", suffix=".part", delete=False)  # scratch, not a result
    tmp = out.name
    state = {"headers": {}, "header": b"", "name": None, "filename": None, "value": bytearray(), "file_parts": 0}
    hasher, size, fields, problems = hashlib.sha256(), [0], {}, []

    def on_header_field(data, start, end):
        state["header"] += data[start:end]

    def on_header_value(data, start, end):
        key = state["header"].lower()
        state["headers"][key] = state["headers"].get(key, b"") + data[start:end]

    def on_header_end():
        state["header"] = b""

    def on_headers_finished():
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")
        raw = disposition.get(b"filename")
        state["filename"] = raw.decode("utf-8", "replace") if raw is not None else None
        if state["name"] == "file":
            state["file_parts"] += 1

    def on_part_data(data, start, end):
        chunk = data[start:end]
        if state["name"] == "file":
            size[0] += len(chunk)
            if size[0] > limit:
                problems.append(APIError(413, f"the upload is over the limit of {limit:,} bytes", param="file",
                                         code="file_too_large"))
                return
            hasher.update(chunk)
            out.write(chunk)
        else:
            state["value"] += chunk
            if len(state["value"]) > MAX_FIELD_BYTES:
                problems.append(APIError(400, f"form field {state['name']!r} is over {MAX_FIELD_BYTES} bytes", param=state["name"]))

    def on_part_end():
        if state["name"] == "file":
            fields.setdefault("__filename__", state["filename"] or "")
        elif state["name"]:
            fields[state["name"]] = bytes(state["value"]).decode("utf-8", "replace")
        state.update(headers={}, name=None, filename=None, value=bytearray())

    parser = MultipartParser(boundary, {"on_header_field": on_header_field, "on_header_value": on_header_value,
                                        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
                if problems:
                    raise problems[0]
            parser.finalize()
        except MultipartParseError as exc:
            raise APIError(400, f"the multipart body does not parse ({exc})", param="file") from None
        finally:
            out.close()
        if state["file_parts"] != 1:
            raise APIError(400, f"expected exactly one `file` part, found {state['file_parts']}", param="file")
        filename = check_filename(fields.pop("__filename__", None))
        return Upload(Path(tmp), filename, size[0], hasher.hexdigest(), fields)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
