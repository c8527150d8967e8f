"""Tests for moeforge/data/splits.py: keyed, deterministic, order-independent membership."""

import hashlib
import random

import pytest

from moeforge.data.records import Record
from moeforge.data.splits import split_records
from moeforge.errors import ConfigError

RECORDS = tuple(
    Record(prompt=f"question {n}?", response=f" answer {n * 7}", source=f"d.jsonl:{n + 1}") for n in range(2000)
)


def membership(splits):
    return {name: {r.canonical_bytes() for r in getattr(splits, name)} for name in ("train", "validation", "heldout")}


def test_every_record_lands_in_exactly_one_split_in_input_order():
    splits = split_records(RECORDS, "salt-a")
    position = {r: i for i, r in enumerate(RECORDS)}
    parts = (splits.train, splits.validation, splits.heldout)
    assert sorted(position[r] for part in parts for r in part) == list(range(len(RECORDS)))
    for part in parts:
        assert [position[r] for r in part] == sorted(position[r] for r in part)


def test_same_salt_gives_the_same_split():
    assert split_records(RECORDS, "salt-a") == split_records(RECORDS, "salt-a")


def test_split_does_not_depend_on_record_order():
    shuffled = list(RECORDS)
    random.Random(0).shuffle(shuffled)
    assert membership(split_records(shuffled, "salt-a")) == membership(split_records(RECORDS, "salt-a"))


def test_fractions_are_roughly_respected():
    validation, heldout = 0.05, 0.10
    splits = split_records(RECORDS, "salt-a", validation=validation, heldout=heldout)
    n = len(RECORDS)
    for got, want in ((len(splits.heldout), heldout), (len(splits.validation), validation)):
        sigma = (n * want * (1 - want)) ** 0.5
        assert abs(got - n * want) < 4 * sigma


def test_held_out_set_depends_on_the_secret_salt():
    held = {salt: membership(split_records(RECORDS, salt))["heldout"] for salt in ("salt-a", "salt-b")}
    assert held["salt-a"] != held["salt-b"]
    # independent draws overlap by about heldout², far from the whole set
    assert len(held["salt-a"] & held["salt-b"]) < 0.5 * len(held["salt-a"])
    # nor is it the unkeyed hash of the content, which anyone holding the records could compute
    unkeyed = {
        r.canonical_bytes()
        for r in RECORDS
        if int.from_bytes(hashlib.sha256(r.canonical_bytes()).digest()[:8], "big") / 2**64 < 0.10
    }
    assert held["salt-a"] != unkeyed


def test_duplicates_and_moved_records_share_a_split():
    record = RECORDS[3]
    copies = [Record(record.prompt, record.response, source=f"elsewhere.csv:row {n}") for n in range(3)]
    for salt in ("salt-a", "salt-b", "salt-c"):
        splits = split_records([*RECORDS, *copies], salt)
        parts = {"train": splits.train, "validation": splits.validation, "heldout": splits.heldout}
        homes = [name for name, part in parts.items() for r in part if r.text == record.text]
        assert len(homes) == 4 and len(set(homes)) == 1


def test_empty_salt_is_rejected():
    with pytest.raises(ConfigError, match="salt must be secret and non-empty"):
        split_records(RECORDS, "")


@pytest.mark.parametrize("validation, heldout", [(-0.1, 0.1), (1.0, 0.0), (0.05, 1.0), (0.5, 0.5), (0.6, 0.5)])
def test_bad_fractions_are_rejected(validation, heldout):
    with pytest.raises(ConfigError, match="fraction|below 1"):
        split_records(RECORDS, "salt-a", validation=validation, heldout=heldout)
