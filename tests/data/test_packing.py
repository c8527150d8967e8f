"""Tests for moeforge/data/packing.py: every token kept, only the last row padded, batches."""

import math

import pytest
import torch

from moeforge.data.formatting import IGNORE_INDEX, Example
from moeforge.data.packing import iter_batches, pack_examples
from moeforge.errors import ConfigError, DataError

PAD = 0


def make_examples(lengths, seed=0):
    """Examples with random ids >= 1 (never the pad id) and a masked prompt of half the length."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for length in lengths:
        ids = torch.randint(1, 300, (length,), generator=generator).tolist()
        n_prompt = length // 2
        examples.append(Example(input_ids=tuple(ids), labels=(IGNORE_INDEX,) * n_prompt + tuple(ids[n_prompt:])))
    return examples


@pytest.mark.parametrize("seq_len", [2, 7, 16, 64])
def test_every_token_is_kept_in_order_and_only_the_last_row_is_padded(seq_len):
    examples = make_examples([5, 9, 1, 13, 8, 3])
    packed = pack_examples(examples, seq_len, PAD)
    ids = [i for e in examples for i in e.input_ids]
    labels = [label for e in examples for label in e.labels]
    n = len(ids)
    assert packed.input_ids.dtype == torch.int64 and packed.labels.dtype == torch.int64
    assert packed.input_ids.shape == (math.ceil(n / seq_len), seq_len)
    assert packed.input_ids.flatten()[:n].tolist() == ids
    assert packed.labels.flatten()[:n].tolist() == labels
    assert (packed.input_ids.flatten()[n:] == PAD).all() and (packed.labels.flatten()[n:] == IGNORE_INDEX).all()
    assert (packed.input_ids[:-1] != PAD).all()  # no padding before the last row
    assert packed.n_tokens == n
    assert packed.n_loss_tokens == sum(label != IGNORE_INDEX for label in labels)


def test_exact_multiple_needs_no_padding():
    examples = make_examples([4, 4, 4])
    packed = pack_examples(examples, 6, PAD)
    assert packed.input_ids.shape == (2, 6)
    assert (packed.input_ids != PAD).all()


def test_bad_arguments():
    with pytest.raises(ConfigError, match="seq_len must be at least 2"):
        pack_examples(make_examples([3]), 1, PAD)
    with pytest.raises(DataError, match="no examples"):
        pack_examples([], 8, PAD)
    with pytest.raises(ConfigError, match="batch_size"):
        next(iter_batches(pack_examples(make_examples([3]), 2, PAD), 0))


def test_batches_in_order_cover_every_row_once():
    packed = pack_examples(make_examples([7] * 20), 5, PAD)
    batches = list(iter_batches(packed, 3))
    rows = packed.input_ids.shape[0]
    assert [b[0].shape[0] for b in batches] == [min(3, rows - start) for start in range(0, rows, 3)]
    assert torch.equal(torch.cat([b[0] for b in batches]), packed.input_ids)
    assert torch.equal(torch.cat([b[1] for b in batches]), packed.labels)


def test_shuffle_is_a_seeded_permutation_of_rows():
    packed = pack_examples(make_examples([7] * 20), 5, PAD)

    def rows(seed):
        return torch.cat([ids for ids, _ in iter_batches(packed, 4, shuffle_seed=seed)])

    first, again, other = rows(1), rows(1), rows(2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, packed.input_ids)
    assert sorted(map(tuple, first.tolist())) == sorted(map(tuple, packed.input_ids.tolist()))
    # labels travel with their rows
    for ids, labels in iter_batches(packed, 4, shuffle_seed=1):
        for row_ids, row_labels in zip(ids, labels, strict=True):
            index = (packed.input_ids == row_ids).all(dim=1).nonzero()[0, 0]
            assert torch.equal(packed.labels[index], row_labels)
