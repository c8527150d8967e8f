"""The real corpora vendored with the package (corpora/README.md), as Records by domain and split.

wikitext: one record per article. python: one record per stdlib module, about 15% of
modules to test by the rank of sha256(path). medical: MTS-Dialog, dialogue → clinical-note
section. math: GSM8K, question → worked answer ending in "#### N". Plain text has prompt "".
"""

import csv
import functools
import gzip
import hashlib
import io
import json
import logging
import math
import re
from importlib import resources
from typing import Literal

from moeforge.data.records import Record
from moeforge.errors import ConfigError

log = logging.getLogger(__name__)

DOMAINS = ("wikitext", "python", "medical", "math")
SPLITS = ("train", "test")

_PYTHON_TEST_FRACTION = 0.15
_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")  # " = Title = "; sections are " = = Section = = "
_MEDICAL_PROMPT = "Doctor-patient dialogue:\n{dialogue}\n\nClinical note ({section_header}):\n"
_MATH_PROMPT = "Question: {question}\nAnswer:"


def load_corpus(name: str, split: Literal["train", "test"]) -> tuple[Record, ...]:
    """The records of one vendored corpus and split; parsed once per process."""
    if name not in DOMAINS:
        raise ConfigError(f"unknown corpus {name!r}; expected one of: {', '.join(DOMAINS)}.")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} for corpus {name!r}; expected one of: {', '.join(SPLITS)}.")
    return _load(name, split)


@functools.lru_cache(maxsize=None)
def _load(name: str, split: str) -> tuple[Record, ...]:
    records = _LOADERS[name](split)
    log.debug("corpus %s/%s: %d records", name, split, len(records))
    return records


def _read(relative: str) -> str:
    """A vendored file, gunzipped, as text; `relative` is below corpora/ without the .gz."""
    blob = resources.files("moeforge.data").joinpath("corpora", f"{relative}.gz").read_bytes()
    return gzip.decompress(blob).decode("utf-8")


def _wikitext(split: str) -> tuple[Record, ...]:
    relative = "wikitext-2/valid.txt" if split == "train" else "wikitext-2/test.txt"
    records: list[Record] = []
    start, lines = 0, []
    for number, line in enumerate(_read(relative).split("\n"), start=1):
        if _ARTICLE_HEADING.match(line):
            records += _article(relative, start, lines)
            start, lines = number, []
        lines.append(line)
    records += _article(relative, start, lines)
    return tuple(records)


def _article(relative: str, start: int, lines: list[str]) -> list[Record]:
    """The article as it stands in the file; the blank preamble before the first heading is dropped."""
    text = "\n".join(lines)
    return [Record(prompt="", response=text, source=f"{relative}:{start}")] if text.strip() else []


def _python(split: str) -> tuple[Record, ...]:
    modules = [json.loads(line) for line in _read("python-code/stdlib.jsonl").split("\n") if line.strip()]
    ranked = sorted(modules, key=lambda m: hashlib.sha256(m["path"].encode("utf-8")).digest())
    test_paths = {m["path"] for m in ranked[: math.ceil(_PYTHON_TEST_FRACTION * len(modules))]}
    return tuple(
        Record(prompt="", response=m["text"], source=m["path"])
        for m in modules
        if (m["path"] in test_paths) == (split == "test")
    )


def _medical(split: str) -> tuple[Record, ...]:
    files = ("train", "validation") if split == "train" else ("test",)
    records: list[Record] = []
    for file in files:
        relative = f"mts-dialog/{file}.csv"
        rows = csv.DictReader(io.StringIO(_read(relative), newline=""))
        for number, row in enumerate(rows, start=1):
            row = {key: value.replace("\r\n", "\n") for key, value in row.items()}  # the CSVs use CRLF
            prompt = _MEDICAL_PROMPT.format(dialogue=row["dialogue"], section_header=row["section_header"])
            records.append(Record(prompt=prompt, response=row["section_text"], source=f"{relative}:row {number}"))
    return tuple(records)


def _math(split: str) -> tuple[Record, ...]:
    relative = f"gsm8k/{split}.jsonl"
    records: list[Record] = []
    for number, line in enumerate(_read(relative).split("\n"), start=1):
        if line.strip():
            item = json.loads(line)
            prompt = _MATH_PROMPT.format(question=item["question"])
            records.append(Record(prompt=prompt, response=f" {item['answer']}", source=f"{relative}:{number}"))
    return tuple(records)


_LOADERS = {"wikitext": _wikitext, "python": _python, "medical": _medical, "math": _math}
