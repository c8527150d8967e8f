import hashlib
import subprocess
import sys

import pytest
import torch

from moeforge.data.records import Record
from moeforge.data.splits import split_records
from moeforge.errors import ConfigError
from moeforge.network.shards import control_sample, eval_sample, eval_samples, miner_shard, parse_seed, rows_to_batches

HOTKEYS = [f"5Hotkey{i:02d}" for i in range(8)]


def test_miner_shard_is_a_pure_function_of_job_round_and_hotkey():
    a = miner_shard(10_000, "job-1", 3, HOTKEYS[0], 200)
    assert a == miner_shard(list(range(10_000)), "job-1", 3, HOTKEYS[0], 200)
    assert len(a) == len(set(a)) == 200 and all(0 <= i < 10_000 for i in a)
    assert a != miner_shard(10_000, "job-2", 3, HOTKEYS[0], 200)
    assert a != miner_shard(10_000, "job-1", 4, HOTKEYS[0], 200)


def test_miner_shard_is_the_same_in_another_process():
    code = "from moeforge.network.shards import miner_shard; print(miner_shard(5000, 'job-1', 7, '5Abc', 50))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(miner_shard(5000, "job-1", 7, "5Abc", 50))


def test_different_hotkeys_get_mostly_different_shards():
    n, size = 10_000, 200  # independent draws overlap in about size²/n = 4 rows
    shards = [set(miner_shard(n, "job", 0, h, size)) for h in HOTKEYS]
    overlaps = [len(a & b) for i, a in enumerate(shards) for b in shards[i + 1 :]]
    assert max(overlaps) <= 20 and sum(overlaps) / len(overlaps) < 10


def test_a_full_shard_is_a_permutation_and_an_oversized_one_is_refused():
    assert sorted(miner_shard(37, "job", 0, "hk", 37)) == list(range(37))
    with pytest.raises(ConfigError, match="asked for 38 rows but only 37"):
        miner_shard(37, "job", 0, "hk", 38)


def test_same_seed_draws_the_same_eval_rows_and_another_seed_does_not():
    block_hash = hashlib.sha256(b"block 117").digest()
    a = eval_sample(5_000, block_hash, 64)
    assert a == eval_sample(5_000, block_hash.hex(), 64) == eval_sample(5_000, "0x" + block_hash.hex(), 64)
    b = eval_sample(5_000, hashlib.sha256(b"block 118").digest(), 64)
    assert a != b and len(set(a) & set(b)) < 16


def test_eval_samples_are_disjoint_and_extend_the_first_draw():
    seed = bytes(range(32))
    score_rows, merge_rows = eval_samples(1_000, seed, 40, 30)
    assert score_rows == eval_sample(1_000, seed, 40)
    assert not set(score_rows) & set(merge_rows) and len(set(merge_rows)) == 30


def test_control_rows_are_train_rows_in_no_shard_of_the_round_drawn_with_the_seed():
    seed, other = hashlib.sha256(b"block 117").digest(), hashlib.sha256(b"block 118").digest()
    assigned = {i for h in HOTKEYS[:3] for i in miner_shard(500, "job", 2, h, 80)}
    rows = control_sample(500, seed, assigned, 64)
    assert len(set(rows)) == 64 and not set(rows) & assigned and all(0 <= i < 500 for i in rows)
    assert rows == control_sample(500, seed.hex(), sorted(assigned), 64)
    assert len(set(rows) & set(control_sample(500, other, assigned, 64))) < 32  # another block, other rows
    few = set(range(495))  # only five rows left outside the shards: those five, no more
    assert sorted(control_sample(500, seed, few, 64)) == [495, 496, 497, 498, 499]
    assert control_sample(500, seed, range(500), 64) == []
    with pytest.raises(ConfigError, match="non-negative"):
        control_sample(500, seed, assigned, -1)


def test_bad_seeds_are_refused_by_name():
    with pytest.raises(ConfigError, match="not hex"):
        parse_seed("zz-not-a-hash")
    with pytest.raises(ConfigError, match="empty"):
        eval_sample(10, b"", 1)


def test_miner_shards_come_from_train_records_and_never_touch_the_heldout_split():
    records = [Record(prompt=f"q{i}", response=f"a{i}", source=f"mem:{i}") for i in range(2_000)]
    splits = split_records(records, salt="validators-secret", heldout=0.1)
    shard = [splits.train[i] for i in miner_shard(splits.train, "job", 0, "hk", 100)]
    assert not set(shard) & set(splits.heldout)
    held = [splits.heldout[i] for i in eval_sample(splits.heldout, b"\x01" * 32, 50)]
    assert set(held) <= set(splits.heldout)


def test_rows_to_batches_keeps_the_order_of_the_indices():
    ids = torch.arange(20).view(10, 2)
    batches = rows_to_batches(ids, -ids, [7, 2, 9, 0, 5], batch_size=2)
    assert [b[0][:, 0].tolist() for b in batches] == [[14, 4], [18, 0], [10]]
    assert all(torch.equal(lab, -x) for x, lab in batches)
