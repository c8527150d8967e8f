"""What the Centre says about an uploaded data file: a quick look at upload, the full report in the worker.

`sniff` reads the first MiB at upload time and refuses (400, one error shape, nothing stored) what
is plainly not data: an empty file, a binary one, bytes that are not UTF-8, a first JSON line that
does not parse, a Parquet file without its magic. `validate` is the full read by the existing
readers (`data/readers.py`, bad records skipped and listed): counts, the field mapping used, the
skipped rows with their line numbers and reasons, duplicates, and the token count with the base's
tokenizer. It runs in the worker, so a large file never holds up the API.
"""

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel

from moeforge.errors import DataError
from moeforge.service.errors import APIError

SNIFF_BYTES = 1024 * 1024
MAX_LISTED = 100  # skipped rows and duplicates listed in a report (all are counted)


class SkippedRow(BaseModel):
    line: str  # "line 12" or "row 12"
    reason: str


class FileReport(BaseModel):
    format: str
    records: int
    skipped: int
    skipped_rows: list[SkippedRow]  # the first MAX_LISTED
    duplicates: int  # records whose prompt and response repeat an earlier record's
    duplicate_rows: list[str]  # "line 7 repeats line 3", the first MAX_LISTED
    fields: str  # e.g. "question → prompt, answer → response"; empty for plain text
    fields_detected: bool
    tokens: int
    tokenizer: str  # the base model whose tokenizer counted
    characters: int


def sniff(path: Path, filename: str) -> None:
    """APIError(400) naming the problem if the file's start shows it is not data in its suffix's format."""
    size = path.stat().st_size
    if size == 0:
        raise APIError(400, f"{filename}: the file is empty", param="file", code="empty_file")
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    suffix = Path(filename).suffix.lower()
    if suffix == ".parquet":
        with open(path, "rb") as f:
            f.seek(max(0, size - 4))
            tail = f.read(4)
        if not head.startswith(b"PAR1") or tail != b"PAR1":
            raise APIError(400, f"{filename}: not a Parquet file (no PAR1 magic at its start and end)", param="file",
                           code="invalid_file_format")
        return
    nul = head.find(b"\x00")
    if nul >= 0:
        raise APIError(400, f"{filename}: binary content (a NUL byte at offset {nul}); expected UTF-8 "
                       "text", param="file", code="binary_file")
    text = head.decode("utf-8", errors="surrogateescape")
    if len(head) == SNIFF_BYTES:  # a character may straddle the cut
        text = text[:-4]
    for number, line in enumerate(text.split("\n"), start=1):
        if any("\udc80" <= c <= "\udcff" for c in line):
            raise APIError(400, f"{filename}: line {number}: bytes that are not UTF-8 (re-save the file as UTF-8)",
                           param="file", code="invalid_encoding")
    if suffix in (".jsonl", ".json"):
        first = next(((n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()), None)
        if first is None:
            raise APIError(400, f"{filename}: no JSON line in its first MiB", param="file", code="invalid_file_format")
        number, line = first
        if not (len(head) == SNIFF_BYTES and number == text.count("\n") + 1):  # a whole first line: it must parse
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == 1 and line.lstrip().startswith("["):
                    raise APIError(400, f"{filename}: one JSON array; expected JSON lines, one object per line",
                                   param="file", code="invalid_file_format") from None
                raise APIError(400, f"{filename}: line {number}: not valid JSON ({exc.msg} at column {exc.colno}); expected "
                               "one JSON object per line", param="file", code="invalid_file_format") from None
            if not isinstance(row, dict):
                raise APIError(400, f"{filename}: line {number}: expected a JSON object, found {type(row).__name__}",
                               param="file", code="invalid_file_format")


def validate(path: Path, tokenizer, tokenizer_name: str) -> FileReport:
    """The full report of one data file, at a path that ends in the user's file name (module docstring); DataError
    naming the first bad record if none is usable."""
    from moeforge.data.readers import DataSpec, detect_format, read_records

    fmt = detect_format(path)
    report = read_records(path, DataSpec(on_error="skip"))
    seen: dict[str, str] = {}
    duplicates, listed, tokens, chars = 0, [], 0, 0
    for record in report.records:
        key = hashlib.sha256(record.canonical_bytes()).hexdigest()
        where = _where(record.source)
        if key in seen:
            duplicates += 1
            if len(listed) < MAX_LISTED:
                listed.append(f"{where} repeats {seen[key]}")
        else:
            seen[key] = where
        chars += len(record.text)
    for batch in _batches([r.text for r in report.records], 512):
        tokens += sum(len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"])
    return FileReport(
        format=fmt, records=len(report.records), skipped=len(report.skipped),
        skipped_rows=[SkippedRow(line=_where(s.source), reason=s.reason) for s in report.skipped[:MAX_LISTED]],
        duplicates=duplicates, duplicate_rows=listed, fields=report.fields, fields_detected=report.detected, tokens=tokens,
        tokenizer=tokenizer_name, characters=chars,
    )


def shown(message: str, folder: Path) -> str:
    """A reader's message without the private folder the file was read from."""
    return message.replace(f"{folder}/", "")


def _where(source: str) -> str:
    """"path:12" → "line 12"; "path:row 12" → "row 12"."""
    tail = source.rsplit(":", 1)[-1].strip()
    return tail if tail.startswith("row") else f"line {tail}"


def _batches(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i : i + n]
