"""Tests for moeforge/data/fields.py: a row into a Record, and messages that suggest the fix."""

import pytest

from moeforge.data.fields import Problem, describe, row_to_record
from moeforge.data.records import Record

PAIR = {"prompt_field": "prompt", "response_field": "response", "text_field": "text"}
TEXT = {"prompt_field": None, "response_field": None, "text_field": "text"}


def test_pair_fields_win_over_the_text_field():
    row = {"prompt": "p", "response": "r", "text": "t"}
    assert row_to_record(row, "f:1", **PAIR) == Record(prompt="p", response="r", source="f:1")
    assert row_to_record(row, "f:1", **TEXT) == Record(prompt="", response="t", source="f:1")


def test_both_pair_fields_missing_are_named_and_both_flags_suggested():
    problem = row_to_record({"instruction": "i", "output": "o"}, "f:1", **PAIR)
    assert isinstance(problem, Problem)
    assert problem.reason == "fields 'prompt', 'response' are missing (this record has: 'instruction', 'output')"
    assert problem.hint == "Pass --prompt-field instruction --response-field output, or fix the record."


def test_the_only_string_field_is_suggested_for_text():
    problem = row_to_record({"body": "hello", "id": 3}, "f:1", **TEXT)
    assert isinstance(problem, Problem) and "--text-field body" in problem.hint


def test_ambiguous_fields_are_listed_not_guessed():
    problem = row_to_record({"alpha": "a", "beta": "b"}, "f:1", **TEXT)
    assert isinstance(problem, Problem)
    assert "--text-field" in problem.hint and "'alpha', 'beta'" in problem.hint


def test_a_row_without_fields_says_so():
    problem = row_to_record({}, "f:1", **TEXT)
    assert isinstance(problem, Problem) and "(this record has: no fields)" in problem.reason


@pytest.mark.parametrize(
    "value, words",
    [(None, "null"), (True, "a boolean"), (42, "a number (42)"), (2.5, "a number (2.5)"),
     ([1, 2], "a list of 2 items"), ({"a": 1}, "an object"), (b"raw", "bytes")],
)
def test_non_string_values_are_described(value, words):
    assert words in describe(value)
    problem = row_to_record({"text": value}, "f:1", **TEXT)
    assert isinstance(problem, Problem) and problem.reason == f"field 'text' is {describe(value)}, expected a string"
