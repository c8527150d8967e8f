"""Tests for moeforge/data/formatting.py: prompt masked, response and eos learned, limits."""

import pytest

from moeforge.data.formatting import IGNORE_INDEX, encode_record, encode_records
from moeforge.data.records import Record
from moeforge.errors import ConfigError, DataError

RECORDS = [
    Record(prompt="Question: Natalia sold 48 clips. How many?\nAnswer:", response=" 48 clips.\n#### 48", source="a:1"),
    Record(prompt="", response="The quick brown fox, unseen words: zyxwv ✓", source="b:2"),
    Record(prompt="Doctor: What brings you in?", response=" A refill.", source="c:row 3"),
]


def test_prompt_is_masked_and_response_plus_eos_is_labelled(tokenizer):
    record = RECORDS[0]
    example = encode_record(record, tokenizer)
    masked = [i for i, label in enumerate(example.labels) if label == IGNORE_INDEX]
    n_prompt = len(masked)
    assert masked == list(range(n_prompt)) and n_prompt > 0  # exactly a leading run
    assert tokenizer.decode(example.input_ids[:n_prompt]) == record.prompt
    assert tokenizer.decode(example.input_ids[n_prompt:-1]) == record.response
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert example.labels[n_prompt:] == example.input_ids[n_prompt:]


def test_plain_text_record_is_labelled_everywhere(tokenizer):
    example = encode_record(RECORDS[1], tokenizer)
    assert IGNORE_INDEX not in example.labels
    assert example.labels == example.input_ids
    assert tokenizer.decode(example.input_ids[:-1]) == RECORDS[1].response


def test_no_special_tokens_besides_the_final_eos(tokenizer):
    example = encode_record(RECORDS[2], tokenizer)
    special = set(tokenizer.all_special_ids)
    assert [i for i in example.input_ids if i in special] == [tokenizer.eos_token_id]


def test_batch_encoding_matches_one_by_one(tokenizer):
    assert encode_records(RECORDS, tokenizer) == [encode_record(r, tokenizer) for r in RECORDS]
    assert encode_records([], tokenizer) == []


def test_over_max_tokens_names_the_record_and_counts(tokenizer):
    record = RECORDS[0]
    total = len(encode_record(record, tokenizer).input_ids)
    assert encode_record(record, tokenizer, max_tokens=total).input_ids  # exactly at the limit is fine
    with pytest.raises(DataError, match=rf"^{record.source}: record is {total} tokens .* over max_tokens={total - 1}"):
        encode_record(record, tokenizer, max_tokens=total - 1)
    with pytest.raises(DataError, match=record.source):
        encode_records(RECORDS, tokenizer, max_tokens=total - 1)


def test_tokenizer_without_eos_is_a_config_error(tokenizer_without_eos):
    with pytest.raises(ConfigError, match="no eos token"):
        encode_record(RECORDS[0], tokenizer_without_eos)
    with pytest.raises(ConfigError, match="no eos token"):
        encode_records(RECORDS, tokenizer_without_eos)
