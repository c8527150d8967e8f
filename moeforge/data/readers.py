"""Customer data files (JSON lines, CSV, plain text, Parquet, a saved HF dataset) into Records.

Every record keeps where it came from ("path:line", or "path:row N" for the Nth data row).
A bad record raises a DataError that names it, or with on_error="skip" is kept in
ReadReport.skipped with its reason; a problem with the file itself (missing, unreadable,
no records at all) always raises.
"""

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moeforge.data.fields import SKIP_HINT, UTF8_HINT, FieldChoice, Problem, describe, undecodable_at
from moeforge.data.records import Record
from moeforge.errors import DataError

log = logging.getLogger(__name__)

Format = Literal["auto", "jsonl", "csv", "text", "parquet", "hf"]

_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".txt": "text", ".md": "text", ".parquet": "parquet"}
_HF_MARKERS = ("dataset_info.json", "state.json")  # what Dataset.save_to_disk writes
_EXPECTED = {
    "jsonl": "JSON lines, one object per line",
    "csv": "a CSV header row, then one record per row",
    "text": "text records separated by blank lines",
    "parquet": "a Parquet table with one record per row",
    "hf": "a Hugging Face dataset with one record per row",
}

Item = tuple[str, Record | Problem]  # (source, what was read there)


class DataSpec(BaseModel):
    """How to read one data file: its format, which fields make a record, what to do with bad ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Format = "auto"                        # auto: by suffix, or a saved HF dataset folder
    prompt_field: str | None = None                # named with response_field: loss on the response only
    response_field: str | None = None
    text_field: str | None = None                  # plain text, the whole of it learnt
    messages_field: str | None = None              # a chat list; the last (assistant) message is the response
    # none of the four named: detected from the first row (moeforge.data.fields.FieldChoice)
    on_error: Literal["raise", "skip"] = "raise"   # skip: bad records are counted in ReadReport.skipped
    max_chars: int = Field(200_000, ge=1)          # a longer record is a bad record

    @model_validator(mode="after")
    def _names_a_record(self) -> "DataSpec":
        if (self.prompt_field is None) != (self.response_field is None):
            raise ValueError("name --prompt-field and --response-field together, or neither to use --text-field")
        named = [self.prompt_field is not None, self.text_field is not None, self.messages_field is not None]
        if sum(named) > 1:
            raise ValueError("name --prompt-field with --response-field, or --text-field, or --messages-field: one of them")
        if self.prompt_field is not None and self.prompt_field == self.response_field:
            raise ValueError(f"--prompt-field and --response-field are both {self.prompt_field!r}; they must differ")
        return self


@dataclass(frozen=True)
class Skipped:
    source: str  # "path:line" or "path:row N"
    reason: str  # what was wrong with it


@dataclass(frozen=True)
class ReadReport:
    records: tuple[Record, ...]
    skipped: tuple[Skipped, ...]
    path: str  # as the caller gave it, so messages match what the user typed
    fields: str = ""  # the fields read, e.g. "question → prompt, answer → response" (empty for plain text files)
    detected: bool = False  # whether `fields` were detected (no field was named)


def read_records(path: str | Path, spec: DataSpec = DataSpec()) -> ReadReport:
    """Every record of one file or saved dataset, in order; raises DataError naming the culprit."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder. Check the path (relative paths start at {Path.cwd()}).")
    fmt = detect_format(path) if spec.format == "auto" else spec.format
    if fmt != "hf" and path.is_dir():
        raise DataError(f"{path}: is a folder, but format {fmt!r} reads one file. Pass a file, or --format hf.")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected {_EXPECTED[fmt]}. Check the path or re-export the data.")
    choice = FieldChoice(spec.prompt_field, spec.response_field, spec.text_field, spec.messages_field)
    report = _collect(str(path), fmt, _READERS[fmt](path, choice), spec)
    return dataclasses.replace(report, fields=choice.describe() if fmt != "text" else "", detected=choice.detected)


def detect_format(path: Path) -> str:
    """The format `auto` means for this path: by suffix, or `hf` for a saved dataset folder."""
    if path.is_dir():
        if any((path / marker).exists() for marker in (*_HF_MARKERS, "dataset_dict.json")):
            return "hf"
        raise DataError(
            f"{path}: is a folder but not a saved Hugging Face dataset (it has no {' or '.join(_HF_MARKERS)}). "
            "Pass a data file, or a folder written by Dataset.save_to_disk."
        )
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        suffixes = ", ".join(_SUFFIXES)
        raise DataError(
            f"{path}: cannot tell the format from the suffix {path.suffix or '(none)'!r}; expected one of "
            f"{suffixes} or a saved Hugging Face dataset folder. Pass --format jsonl|csv|text|parquet|hf."
        )
    return fmt


def _collect(name: str, fmt: str, items: Iterator[Item], spec: DataSpec) -> ReadReport:
    records: list[Record] = []
    skipped: list[Skipped] = []
    for source, item in items:
        if isinstance(item, Record):
            item = _check_size(item, spec.max_chars)
        if isinstance(item, Record):
            records.append(item)
        elif spec.on_error == "raise":
            raise DataError(f"{source}: {item.reason}. {item.hint}")
        else:
            skipped.append(Skipped(source, item.reason))
    first = f"the first at {skipped[0].source}: {skipped[0].reason}" if skipped else ""
    if not records:
        detail = f" ({len(skipped)} bad records skipped, {first})" if skipped else ""
        raise DataError(f"{name}: no records{detail}; expected {_EXPECTED[fmt]}. Check the file and the field flags.")
    if skipped:
        log.warning("%s: skipped %d bad records, %s", name, len(skipped), first)
    log.info("%s: read %d records (%s)", name, len(records), fmt)
    return ReadReport(records=tuple(records), skipped=tuple(skipped), path=name)


def _check_size(record: Record, max_chars: int) -> Record | Problem:
    size = len(record.text)
    if size > max_chars:
        return Problem(
            f"record is {size:,} characters, over the limit of {max_chars:,}",
            "Split the record, raise --max-chars, or pass --skip-bad to skip bad records.",
        )
    if not record.text.strip():
        return Problem("record is empty", SKIP_HINT)
    return record


def _read_text(path: Path) -> str:
    """The file as text; bytes that are not UTF-8 survive as surrogates, so the line can be named."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror}). Check its permissions.") from exc
    return raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) on "\\n" only: str.splitlines would also split on \\x0c, \\u2028..."""
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def _jsonl(path: Path, fields: FieldChoice) -> Iterator[Item]:
    text = _read_text(path)
    _reject_whole_document(path, text)
    for number, line in _lines(text):
        if not line.strip():
            continue
        source = f"{path}:{number}"
        bad = undecodable_at(line)
        if bad is not None:
            yield source, Problem(f"bytes are not valid UTF-8 ({bad})", UTF8_HINT)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = "Expected one JSON object per line; fix the line, or pass --skip-bad to skip bad records."
            yield source, Problem(f"not valid JSON ({exc.msg} at column {exc.colno})", hint)
            continue
        if not isinstance(row, dict):
            yield source, Problem(f"expected a JSON object, found {describe(row)}", SKIP_HINT)
            continue
        yield source, fields.record(row, source)


def _reject_whole_document(path: Path, text: str) -> None:
    """A pretty-printed .json file fails on its first line; say what the file is instead."""
    head = text.lstrip()
    if not head.startswith(("[", "{")) or (head.startswith("{") and _parses(head.split("\n", 1)[0])):
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return
    what = f"one JSON array of {len(value)} items" if isinstance(value, list) else "one JSON document"
    raise DataError(
        f"{path}: the file is {what}; expected JSON lines, one object per line. "
        f"Convert it, e.g. jq -c '.[]' {path} > {path.with_suffix('.jsonl')}"
    )


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _csv(path: Path, fields: FieldChoice) -> Iterator[Item]:
    rows = _csv_rows(path, _read_text(path))
    if not rows:
        return
    header_line, header = rows[0]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        names = ", ".join(map(repr, duplicates))
        raise DataError(f"{path}:{header_line}: the header names {names} more than once. Rename the columns.")
    for number, (line, row) in enumerate(rows[1:], start=1):
        source = f"{path}:row {number}"
        if len(row) != len(header):
            reason = f"row has {len(row)} values but the header has {len(header)} columns (row ends on line {line})"
            yield source, Problem(reason, "Quote values that hold commas, or pass --skip-bad to skip bad records.")
            continue
        yield source, fields.record(dict(zip(header, row)), source)


def _csv_rows(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """(line the row ends on, values) for every non-blank row, header first."""
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, len(text) + 1))  # lengths are judged by max_chars, not by csv
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return [(reader.line_num, row) for row in reader if row]
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({exc}). Fix the quoting on that line.") from exc
    finally:
        csv.field_size_limit(previous)


def _text(path: Path, fields: FieldChoice) -> Iterator[Item]:
    block: list[tuple[int, str]] = []
    for number, line in _lines(_read_text(path)):
        if line.strip():
            block.append((number, line))
        elif block:
            yield _text_record(path, block)
            block = []
    if block:
        yield _text_record(path, block)


def _text_record(path: Path, block: list[tuple[int, str]]) -> Item:
    for number, line in block:
        bad = undecodable_at(line)
        if bad is not None:
            return f"{path}:{number}", Problem(f"bytes are not valid UTF-8 ({bad})", UTF8_HINT)
    source = f"{path}:{block[0][0]}"
    return source, Record(prompt="", response="\n".join(line for _, line in block), source=source)


def _parquet(path: Path, fields: FieldChoice) -> Iterator[Item]:
    import pyarrow as pa  # imported when a Parquet file is read, not with the package
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc}). Check the file, or pass --format.") from exc
    number = 0
    for batch in table.iter_batches():
        for row in batch.to_pylist():
            number += 1
            source = f"{path}:row {number}"
            yield source, fields.record(row, source)


def _hf(path: Path, fields: FieldChoice) -> Iterator[Item]:
    import datasets  # slow to import; only for saved Hugging Face datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(
            f"{path}: not a saved Hugging Face dataset ({exc}). Save one with Dataset.save_to_disk, or pass --format."
        ) from exc
    if isinstance(dataset, datasets.DatasetDict):
        splits = ", ".join(map(repr, dataset))
        raise DataError(
            f"{path}: holds several splits ({splits}); expected one dataset. "
            f"Pass one split's folder, e.g. {path / next(iter(dataset))}."
        )
    for number, row in enumerate(dataset, start=1):
        source = f"{path}:row {number}"
        yield source, fields.record(row, source)


_READERS: dict[str, Callable[[Path, FieldChoice], Iterator[Item]]] = {
    "jsonl": _jsonl,
    "csv": _csv,
    "text": _text,
    "parquet": _parquet,
    "hf": _hf,
}
