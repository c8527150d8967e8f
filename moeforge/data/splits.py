"""Train / validation / held-out membership decided per record by a keyed hash of its content.

u = HMAC-SHA256(salt, record.canonical_bytes()) read as a number in [0, 1): u < heldout goes
to held-out, then validation, else train. So a split is fixed for one salt, independent of
record order, keeps duplicates together, and cannot be recomputed by anyone without the salt
(someone holding the training split cannot tell which examples were held out).
"""

import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from moeforge.data.records import Record
from moeforge.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    train: tuple[Record, ...]
    validation: tuple[Record, ...]
    heldout: tuple[Record, ...]


def split_records(records: Iterable[Record], salt: str, validation: float = 0.05, heldout: float = 0.10) -> Splits:
    """Each record to one split by its keyed hash; input order is kept within each split."""
    check_split(salt, validation, heldout)
    key = salt.encode("utf-8")
    train: list[Record] = []
    val: list[Record] = []
    held: list[Record] = []
    for record in records:
        u = split_position(record, key)
        (held if u < heldout else val if u < heldout + validation else train).append(record)
    log.debug("split records: %d train, %d validation, %d heldout", len(train), len(val), len(held))
    return Splits(train=tuple(train), validation=tuple(val), heldout=tuple(held))


def check_split(salt: str, validation: float, heldout: float) -> None:
    """ConfigError unless the salt is non-empty and the fractions leave room for training data."""
    if not salt:
        raise ConfigError(
            "the held-out salt must be secret and non-empty: it decides which records are held out. "
            "Pass --salt (or set MOEFORGE_DATA_SALT) to a long random string and keep it private."
        )
    for name, value in (("validation", validation), ("heldout", heldout)):
        if not 0 <= value < 1:
            raise ConfigError(f"the {name} fraction must be in [0, 1); got {value}.")
    if validation + heldout >= 1:
        raise ConfigError(f"validation + heldout must be below 1 to leave training data; got {validation} + {heldout}.")


def split_position(record: Record, key: bytes) -> float:
    """The record's place in [0, 1): the first 8 bytes of its HMAC as a fraction of 2**64."""
    digest = hmac.new(key, record.canonical_bytes(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
