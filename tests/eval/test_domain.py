import math

import pytest

from moeforge.data.formatting import encode_records
from moeforge.data.packing import pack_examples
from moeforge.data.records import Record
from moeforge.errors import ConfigError, DataError
from moeforge.eval.domain import domain_loss, packed_rows
from moeforge.model.loss import mean_token_loss
from tests.eval.memorised import TAUGHT, memorised_model

RESPONSES = (" 40 + 2 = 42\n#### 42", " 3 * 5 = 15\n#### 15", " it is 7\n#### 7")


def _records(prompt: str) -> list[Record]:
    return [Record(prompt.format(i=i), response, f"t:{i}") for i, response in enumerate(RESPONSES)]


def _scored(tokenizer) -> int:
    return sum(len(tokenizer.encode(r, add_special_tokens=False)) + 1 for r in RESPONSES)  # + eos


def test_only_response_and_eos_tokens_are_counted_whatever_the_prompt():
    model, tokenizer = memorised_model()
    short = domain_loss(model, tokenizer, _records("Q{i}:"), seq_len=512)
    long = domain_loss(model, tokenizer, _records("Question number {i}, a longer one with more words:\nAnswer:"), seq_len=512)
    assert short.tokens == long.tokens == _scored(tokenizer)
    assert short.loss != long.loss  # the prompt is context, not scored


def test_domain_loss_is_mean_token_loss_of_the_packed_records():
    model, tokenizer = memorised_model()
    records = _records("Question {i}:\nAnswer:") * 4
    packed = pack_examples(encode_records(records, tokenizer), 16, tokenizer.pad_token_id)
    result = domain_loss(model, tokenizer, records, seq_len=16, batch_size=3)
    assert result.loss == pytest.approx(mean_token_loss(model, packed.input_ids, packed.labels), rel=1e-6)
    assert result.tokens == int((packed.labels[:, 1:] != -100).sum())


def test_one_row_matches_the_models_own_loss():
    model, tokenizer = memorised_model()
    records = list(TAUGHT[:2])
    result = domain_loss(model, tokenizer, records, seq_len=256)
    input_ids, labels = packed_rows(tokenizer, records, seq_len=256)
    assert input_ids.shape[0] == 1
    reference = model(input_ids=input_ids, labels=labels).loss.item()  # transformers shifts and masks itself
    assert result.loss == pytest.approx(reference, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))


def test_max_tokens_takes_whole_rows_from_the_start():
    model, tokenizer = memorised_model()
    records = _records("Question {i}:\nAnswer:") * 4
    all_ids, all_labels = packed_rows(tokenizer, records, seq_len=16)
    assert all_ids.shape[0] > 3
    result = domain_loss(model, tokenizer, records, seq_len=16, max_tokens=40)
    assert result.loss == pytest.approx(mean_token_loss(model, all_ids[:2], all_labels[:2]), rel=1e-6)
    assert result.tokens == int((all_labels[:2, 1:] != -100).sum()) <= 40


def test_rows_holding_only_prompt_are_refused_naming_the_record():
    model, tokenizer = memorised_model()
    records = [Record("Question: " + "a long preamble " * 20 + "\nAnswer:", " 1\n#### 1", "long.jsonl:1")]
    with pytest.raises(DataError, match=r"first 1 rows of 16 tokens \(max_tokens=16\) hold only prompt.*long.jsonl:1"):
        domain_loss(model, tokenizer, records, seq_len=16, max_tokens=16)


def test_max_tokens_below_seq_len_is_refused():
    _, tokenizer = memorised_model()
    with pytest.raises(ConfigError, match=r"max_tokens=8 is below seq_len=16"):
        packed_rows(tokenizer, _records("Q:"), seq_len=16, max_tokens=8)
