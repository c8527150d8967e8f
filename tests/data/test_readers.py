"""Tests for moeforge/data/readers.py: every format, field names, and every kind of bad input."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from moeforge.data.readers import DataSpec, read_records
from moeforge.errors import DataError

ROWS = [
    {"prompt": "What is 2 + 3?", "response": " 5", "text": "First plain text."},
    {"prompt": "Name a colour.", "response": " Blue, like the sea,\nor \"navy\".", "text": "Second, with a comma."},
    {"prompt": "Say é in UTF-8.", "response": " é → ok ✓", "text": "Third: ünïcödé."},
]
PAIR = DataSpec(prompt_field="prompt", response_field="response")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def pairs(report):
    return [(r.prompt, r.response) for r in report.records]


# --- every format -------------------------------------------------------------------------


def test_jsonl_reads_prompt_response_pairs_with_their_lines(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    report = read_records(path, PAIR)
    assert pairs(report) == [(row["prompt"], row["response"]) for row in ROWS]
    assert [r.source for r in report.records] == [f"{path}:{n}" for n in range(1, len(ROWS) + 1)]
    assert report.skipped == () and report.path == str(path)


def test_jsonl_text_field_gives_empty_prompt(tmp_path):
    report = read_records(write_jsonl(tmp_path / "train.jsonl", ROWS), DataSpec(text_field="text"))
    assert [(r.prompt, r.text) for r in report.records] == [("", row["text"]) for row in ROWS]
    assert report.fields == "text → text" and not report.detected


def test_with_no_field_named_prompt_and_response_are_detected_before_text(tmp_path):
    report = read_records(write_jsonl(tmp_path / "train.jsonl", ROWS))  # rows hold prompt, response and text
    assert pairs(report) == [(row["prompt"], row["response"]) for row in ROWS]
    assert report.fields == "prompt → prompt, response → response" and report.detected


@pytest.mark.parametrize("row, expected, fields", [
    ({"question": "q?", "answer": "a."}, ("q?", "a."), "question → prompt, answer → response"),
    ({"Instruction": "do", "Output": "done"}, ("do", "done"), "Instruction → prompt, Output → response"),
    ({"prompt": "p", "completion": "c"}, ("p", "c"), "prompt → prompt, completion → response"),
    ({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "hello"}]}, ("be brief\n\nhi", "hello"), "messages → messages"),
    ({"text": "plain", "id": 3}, ("", "plain"), "text → text"),
])
def test_common_field_shapes_are_detected_from_the_first_row(tmp_path, row, expected, fields):
    report = read_records(write_jsonl(tmp_path / "d.jsonl", [row, row]))
    assert pairs(report) == [expected, expected] and report.fields == fields


def test_a_chat_that_does_not_end_with_the_assistant_is_a_bad_record_named(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            {"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(DataError, match=r"d.jsonl:2: the last of messages is a 'user' message"):
        read_records(write_jsonl(tmp_path / "d.jsonl", rows))


def test_json_suffix_reads_as_json_lines_and_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("\n" + json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    report = read_records(path, DataSpec(text_field="text"))
    assert [r.text for r in report.records] == [ROWS[0]["text"], ROWS[1]["text"]]
    assert [r.source for r in report.records] == [f"{path}:2", f"{path}:4"]


def test_csv_reads_quoted_commas_and_newlines(tmp_path):
    path = write_csv(tmp_path / "train.csv", ROWS)
    report = read_records(path, PAIR)
    assert pairs(report) == [(row["prompt"], row["response"]) for row in ROWS]
    assert [r.source for r in report.records] == [f"{path}:row {n}" for n in range(1, len(ROWS) + 1)]


def test_text_gives_one_record_per_blank_line_separated_block(tmp_path):
    blocks = ["First block,\nstill the first.", "Second block.", "  Indented third\n\tkeeps its whitespace."]
    lines, starts = ["", ""], []
    for block in blocks:  # each block is followed by a blank and a whitespace-only line
        starts.append(len(lines) + 1)
        lines += [*block.split("\n"), "", "  "]
    path = tmp_path / "notes.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    report = read_records(path)
    assert [(r.prompt, r.response) for r in report.records] == [("", b) for b in blocks]
    assert [r.source for r in report.records] == [f"{path}:{n}" for n in starts]


def test_markdown_with_crlf_line_endings_reads_as_text(tmp_path):
    path = tmp_path / "notes.md"
    path.write_bytes(b"# Title\r\nbody\r\n\r\nsecond\r\n")
    assert [r.text for r in read_records(path).records] == ["# Title\nbody", "second"]


def test_parquet_reads_rows(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    report = read_records(path, PAIR)
    assert pairs(report) == [(row["prompt"], row["response"]) for row in ROWS]
    assert report.records[-1].source == f"{path}:row {len(ROWS)}"


def test_saved_hf_dataset_folder_is_detected_and_read(tmp_path):
    import datasets

    folder = tmp_path / "dataset"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    report = read_records(folder, PAIR)
    assert pairs(report) == [(row["prompt"], row["response"]) for row in ROWS]
    assert report.records[0].source == f"{folder}:row 1"


def test_hf_dataset_dict_names_its_splits(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"several splits \('train'\).*dd/train"):
        read_records(folder, PAIR)


def test_explicit_format_overrides_the_suffix(tmp_path):
    path = write_jsonl(tmp_path / "data.log", ROWS)
    report = read_records(path, DataSpec(format="jsonl", text_field="prompt"))
    assert [r.text for r in report.records] == [row["prompt"] for row in ROWS]


# --- configurable field names ---------------------------------------------------------------


def test_custom_prompt_and_response_fields(tmp_path):
    rows = [{"question": row["prompt"], "answer": row["response"], "id": n} for n, row in enumerate(ROWS)]
    path = write_csv(tmp_path / "qa.csv", rows)
    report = read_records(path, DataSpec(prompt_field="question", response_field="answer"))
    assert pairs(report) == [(row["question"], row["answer"]) for row in rows]


def test_custom_text_field(tmp_path):
    rows = [{"body": row["text"]} for row in ROWS]
    report = read_records(write_jsonl(tmp_path / "t.jsonl", rows), DataSpec(text_field="body"))
    assert [r.text for r in report.records] == [row["body"] for row in rows]


def test_prompt_field_without_response_field_is_rejected():
    with pytest.raises(ValidationError, match="--response-field"):
        DataSpec(prompt_field="prompt")


def test_unknown_spec_key_is_rejected():
    with pytest.raises(ValidationError, match="extra"):
        DataSpec(promt_field="prompt")


# --- bad input: file level -------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=f"{path}: no such file"):
        read_records(path)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "empty.txt", "empty.parquet"])
def test_empty_file_names_the_path(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(DataError, match=f"{path}: the file is empty"):
        read_records(path)


def test_file_with_only_blank_lines_has_no_records(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}: no records"):
        read_records(path)


def test_unknown_suffix_asks_for_format(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DataError, match=r"data.xlsx: cannot tell the format.*--format"):
        read_records(path)


def test_folder_that_is_not_a_dataset_is_rejected(tmp_path):
    with pytest.raises(DataError, match="not a saved Hugging Face dataset"):
        read_records(tmp_path)


def test_corrupt_parquet_names_the_file(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match=f"{path}: not a readable Parquet file"):
        read_records(path, PAIR)


def test_pretty_printed_json_array_says_to_convert(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=rf"one JSON array of {len(ROWS)} items.*jq -c"):
        read_records(path)


# --- bad input: one record --------------------------------------------------------------------


def test_wrong_field_name_lists_present_fields_and_suggests_the_flag(tmp_path):
    rows = [{"question": "q1", "answer": "a1"}, {"prompt": "q2", "answer": "a2"}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as info:
        read_records(path, DataSpec(prompt_field="question", response_field="answer"))
    assert str(info.value) == (
        f"{path}:2: field 'question' is missing (this record has: 'prompt', 'answer'). "
        "Pass --prompt-field prompt, or fix the record."
    )


def test_named_text_field_missing_suggests_prompt_and_response_flags(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    expected = r"qa.jsonl:1: field 'text' is missing.*--prompt-field question --response-field answer"
    with pytest.raises(DataError, match=expected):
        read_records(path, DataSpec(text_field="text"))


def test_wrong_csv_column_names_the_row_and_columns(tmp_path):
    path = write_csv(tmp_path / "t.csv", [{"body": "x", "id": "1"}])
    with pytest.raises(DataError, match=r"t.csv:row 1: no field to read: none of prompt/response.* \(this record has: "
                                         r"'body', 'id'\)\. Pass --text-field body"):
        read_records(path)


def test_invalid_json_line_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"text": "unterminated\n', encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}:2: not valid JSON"):
        read_records(path)


def test_json_line_that_is_not_an_object_is_rejected(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('"just a string"\n', encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}:1: expected a JSON object, found a string"):
        read_records(path)


def test_non_string_value_names_field_and_type(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [ROWS[0], {"prompt": "p", "response": 42}])
    with pytest.raises(DataError, match=rf"{path}:2: field 'response' is a number \(42\), expected a string"):
        read_records(path, PAIR)


def test_null_parquet_value_is_reported_as_null(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "ok"}, {"text": None}]), path)
    with pytest.raises(DataError, match=f"{path}:row 2: field 'text' is null"):
        read_records(path)


def test_undecodable_bytes_name_the_line_in_json_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    bad_line = b'{"text": "bad \xff byte"}'
    path.write_bytes(b'{"text": "fine"}\n' + bad_line + b"\n")
    column = bad_line.index(b"\xff") + 1  # the characters before it are ASCII, one byte each
    with pytest.raises(DataError, match=rf"{path}:2: bytes are not valid UTF-8 \(byte 0xff at column {column}\)"):
        read_records(path)


def test_undecodable_bytes_name_the_line_in_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"first block\n\nsecond block\nhas \xc3\x28 here\n")
    with pytest.raises(DataError, match=f"{path}:4: bytes are not valid UTF-8"):
        read_records(path)


def test_undecodable_bytes_in_csv_name_the_row_and_field(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"text\nfine\nbad \xfe\n")
    with pytest.raises(DataError, match=f"{path}:row 2: field 'text' has bytes that are not valid UTF-8"):
        read_records(path)


def test_over_long_record_gives_size_and_limit(tmp_path):
    text = "x" * 101
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "short"}, {"text": text}])
    with pytest.raises(DataError, match=rf"{path}:2: record is {len(text)} characters, over the limit of 100"):
        read_records(path, DataSpec(max_chars=100))


def test_empty_record_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "   "}])
    with pytest.raises(DataError, match=f"{path}:1: record is empty"):
        read_records(path)


def test_empty_response_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "response": ""}])
    with pytest.raises(DataError, match=f"{path}:1: field 'response' is empty"):
        read_records(path, PAIR)


def test_csv_row_with_wrong_number_of_values_names_the_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("prompt,response\np,r\np2,r2,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}:row 2: row has 3 values but the header has 2 columns"):
        read_records(path, PAIR)


# --- skip mode ------------------------------------------------------------------------------------


def test_skip_mode_counts_and_reports_every_bad_record(tmp_path):
    good = [json.dumps({"text": f"good {n}"}) for n in range(3)]
    bad = {  # line number → (line, words the reason must contain)
        2: ("{broken", "not valid JSON"),
        4: (json.dumps({"body": "no text field"}), "field 'text' is missing"),
        5: (json.dumps({"text": 7}), "is a number"),
        6: (json.dumps({"text": "y" * 50}), "over the limit"),
    }
    lines = [good[0], bad[2][0], good[1], bad[4][0], bad[5][0], bad[6][0], good[2]]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n" + b'{"text": "\xff"}\n')
    bad[8] = ("", "not valid UTF-8")

    report = read_records(path, DataSpec(on_error="skip", max_chars=20))

    assert [r.text for r in report.records] == [json.loads(line)["text"] for line in good]
    assert [s.source for s in report.skipped] == [f"{path}:{n}" for n in sorted(bad)]
    for skipped, n in zip(report.skipped, sorted(bad), strict=True):
        assert bad[n][1] in skipped.reason


def test_skip_mode_still_raises_when_every_record_is_bad(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"body": "a"}, {"body": "b"}])
    with pytest.raises(DataError, match=rf"{path}: no records \(2 bad records skipped, the first at {path}:1"):
        read_records(path, DataSpec(on_error="skip"))
