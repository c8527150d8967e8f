"""One split per data file across every command: the salt a file was split with, remembered by its content.

`profile`, `train` and `eval` on the same file must agree on which records are held out, or a user
evaluates on what they trained on. A file's salt is the one given (`--salt`/`MOEFORGE_DATA_SALT`),
else the one remembered for the file's content fingerprint under `<home>/splits/`, else a new
random one, remembered there (readable by the user only: whoever holds it can re-derive the
held-out split). `SplitNote` says which split an output was made from; `train` writes it beside
its outputs.
"""

import json
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from moeforge.atomic import write_text
from moeforge.data.records import Record
from moeforge.data.splits import Splits, split_records
from moeforge.errors import ConfigError

SplitName = Literal["train", "validation", "heldout", "all"]
SPLIT_FILE = "split.json"
VALIDATION, HELDOUT = 0.05, 0.10  # the fractions every command splits a data file with (as `data prepare` does)


class SplitNote(BaseModel):
    """Which records of which data an output was made from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = 1
    data: str  # the path or corpus name as given
    data_fingerprint: str | None  # None for a vendored corpus (its own fixed splits)
    split: str  # train / validation / heldout / all, or a vendored corpus's split (train, test)
    records: int  # in the split used
    counts: dict[str, int]  # every split's size
    salt_source: str  # "--salt", "remembered in …", "new, remembered in …", or "the corpus's own split"

    def describe(self) -> str:
        sizes = ", ".join(f"{name} {count:,}" for name, count in self.counts.items())
        return f"{self.data}: the {self.split} split, {self.records:,} records ({sizes}; salt {self.salt_source})"


def salt_for(fingerprint: str, given: str | None, home: Path) -> tuple[str, str]:
    """(salt, where it came from) for data with `fingerprint`: the given one, the remembered one, or a new one."""
    if given:
        return given, "from --salt / MOEFORGE_DATA_SALT"
    path = home / "splits" / f"{fingerprint[:32]}.json"
    if path.is_file():
        try:
            salt = json.loads(path.read_text(encoding="utf-8"))["salt"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a remembered split ({exc}). Delete it to split the data afresh (the "
                              "held-out records then change), or pass --salt.") from None
        return salt, f"remembered in {path}"
    salt = secrets.token_hex(16)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_text(path, json.dumps({"salt": salt, "data_fingerprint": fingerprint}) + "\n")
    os.chmod(path, 0o600)
    return salt, f"new, remembered in {path}"


def choose(records: tuple[Record, ...], split: SplitName, salt: str) -> tuple[tuple[Record, ...], Splits]:
    """The records of `split` (all of them for "all"), and every split."""
    splits = split_records(records, salt, validation=VALIDATION, heldout=HELDOUT)
    chosen = records if split == "all" else getattr(splits, split)
    if not chosen:
        raise ConfigError(f"the {split} split of the data is empty ({len(records)} records in all, {HELDOUT:.0%} held out, "
                          f"{VALIDATION:.0%} validation): give more records, or --split all.")
    return chosen, splits
