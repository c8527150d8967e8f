"""Tests for moeforge/data/fingerprint.py: content in order decides the digest, paths do not."""

from dataclasses import replace

import pytest

from moeforge.data.fingerprint import fingerprint_records
from moeforge.data.records import Record

RECORDS = (
    Record(prompt="Question: 2 + 2?\nAnswer:", response=" 4", source="a.jsonl:1"),
    Record(prompt="", response="plain text ✓", source="a.jsonl:2"),
    Record(prompt="Doctor: hello", response=" Patient: hi", source="a.jsonl:3"),
)


def test_is_a_sha256_hex_digest_and_deterministic():
    digest = fingerprint_records(RECORDS)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert fingerprint_records(list(RECORDS)) == digest == fingerprint_records(iter(RECORDS))


@pytest.mark.parametrize("index", range(len(RECORDS)))
@pytest.mark.parametrize("field", ["prompt", "response"])
def test_changes_when_any_record_content_changes(index, field):
    changed = list(RECORDS)
    changed[index] = replace(RECORDS[index], **{field: getattr(RECORDS[index], field) + "!"})
    assert fingerprint_records(changed) != fingerprint_records(RECORDS)


def test_ignores_the_source_path():
    moved = [replace(r, source=f"/elsewhere/b.parquet:row {n}") for n, r in enumerate(RECORDS)]
    assert fingerprint_records(moved) == fingerprint_records(RECORDS)


def test_depends_on_order_and_count():
    assert fingerprint_records(RECORDS[::-1]) != fingerprint_records(RECORDS)
    assert fingerprint_records(RECORDS[:-1]) != fingerprint_records(RECORDS)
    assert fingerprint_records([*RECORDS, RECORDS[0]]) != fingerprint_records(RECORDS)


def test_field_and_record_boundaries_are_unambiguous():
    def fp(*pairs):
        return fingerprint_records([Record(p, r, "x") for p, r in pairs])

    assert fp(("ab", "c")) != fp(("a", "bc"))  # same text, different prompt/response boundary
    assert fp(("", "ab")) != fp(("", "a"), ("", "b"))  # same text, one record or two
    assert fp(("a", "")) != fp(("", "a"))
