import pytest
import torch
from safetensors.torch import save as save_safetensors
from transformers import AutoTokenizer

from moeforge.data.fingerprint import fingerprint_records
from moeforge.errors import ConfigError, DataError
from moeforge.network.jobdata import (
    decode_train_rows,
    encode_train_rows,
    heldout_check,
    heldout_rows,
    pack_rows,
    shard,
    split_job,
)
from tests.network.conftest import SALT, make_job


@pytest.fixture(scope="module")
def tokenizer(small_testbed):
    return AutoTokenizer.from_pretrained(str(small_testbed[1]))


@pytest.fixture(scope="module")
def job(job_records, tokenizer):
    splits = split_job(job_records, SALT, validation=0.05, heldout=0.2)
    held = pack_rows(splits.heldout, tokenizer, 16)
    return make_job(data_fingerprint=fingerprint_records(job_records), heldout_check=heldout_check(SALT, splits.heldout),
                    heldout_rows=held.input_ids.shape[0], seq_len=16, split={"validation": 0.05, "heldout": 0.2}), held


def test_validators_rederive_exactly_the_owners_held_out_rows(job, job_records, tokenizer):
    spec, held = job
    got = heldout_rows(spec, job_records, SALT, tokenizer)
    assert torch.equal(got.input_ids, held.input_ids) and torch.equal(got.labels, held.labels)


def test_a_wrong_salt_or_other_data_is_refused_saying_which(job, job_records, tokenizer):
    spec, _ = job
    with pytest.raises(ConfigError, match="not the owner's salt"):
        heldout_rows(spec, job_records, "guessed", tokenizer)
    with pytest.raises(DataError, match="is not job unit-job's"):
        heldout_rows(spec, job_records[:-1], SALT, tokenizer)
    assert heldout_check(SALT, job_records[:5]) != heldout_check("guessed", job_records[:5])


def test_train_rows_round_trip_through_their_stored_form_and_shard_by_index(job_records, tokenizer):
    packed = pack_rows(job_records[:20], tokenizer, 16)
    back = decode_train_rows(encode_train_rows(packed), seq_len=16, rows=packed.input_ids.shape[0])
    assert torch.equal(back.input_ids, packed.input_ids) and torch.equal(back.labels, packed.labels)
    part = shard(back, [3, 1])
    assert torch.equal(part.input_ids, packed.input_ids[[3, 1]]) and part.n_loss_tokens == int((part.labels != -100).sum())


def test_stored_rows_of_another_shape_or_with_extra_tensors_are_refused(job_records, tokenizer):
    packed = pack_rows(job_records[:20], tokenizer, 16)
    n = packed.input_ids.shape[0]
    with pytest.raises(DataError, match=f"expected int32\\({n}, 32\\)"):
        decode_train_rows(encode_train_rows(packed), seq_len=32, rows=n)
    extra = save_safetensors({"input_ids": packed.input_ids.int(), "labels": packed.labels.int(), "secret": torch.zeros(1)})
    with pytest.raises(DataError, match="secret"):
        decode_train_rows(extra, seq_len=16, rows=n)
