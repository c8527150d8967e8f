"""Examples concatenated in order and cut into fixed-length rows, then served in batches.

Nothing is dropped: the last row is padded with pad_id and label -100, so every token of
every example is trained on exactly once per epoch. Examples may straddle two rows.
"""

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain

import torch

from moeforge.data.formatting import IGNORE_INDEX, Example
from moeforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Packed:
    input_ids: torch.Tensor  # [N, L] int64
    labels: torch.Tensor     # [N, L] int64, IGNORE_INDEX where no loss (prompt, padding)
    n_tokens: int            # real tokens, padding excluded
    n_loss_tokens: int       # tokens with a label


def pack_examples(examples: Sequence[Example], seq_len: int, pad_id: int) -> Packed:
    """Concatenate, cut into rows of seq_len, pad only the final partial row."""
    if seq_len < 2:
        raise ConfigError(f"seq_len must be at least 2 (got {seq_len}): a token and the next one to predict.")
    if not examples:
        raise DataError("no examples to pack; the data produced no records. Check the input file and its split.")
    ids = torch.tensor(list(chain.from_iterable(e.input_ids for e in examples)), dtype=torch.int64)
    labels = torch.tensor(list(chain.from_iterable(e.labels for e in examples)), dtype=torch.int64)
    n_tokens = ids.numel()
    rows = math.ceil(n_tokens / seq_len)
    pad = rows * seq_len - n_tokens
    ids = torch.cat([ids, torch.full((pad,), pad_id, dtype=torch.int64)]).view(rows, seq_len)
    labels = torch.cat([labels, torch.full((pad,), IGNORE_INDEX, dtype=torch.int64)]).view(rows, seq_len)
    n_loss = int((labels != IGNORE_INDEX).sum())
    log.debug(
        "packed %d examples: %d tokens (%d with loss), %d rows of %d", len(examples), n_tokens, n_loss, rows, seq_len
    )
    return Packed(input_ids=ids, labels=labels, n_tokens=n_tokens, n_loss_tokens=n_loss)


def iter_batches(
    packed: Packed, batch_size: int, *, shuffle_seed: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, labels) of up to batch_size rows each; rows in a seeded random order when a seed is given."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1 (got {batch_size}).")
    rows = packed.input_ids.shape[0]
    if shuffle_seed is None:
        order = torch.arange(rows)
    else:
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(shuffle_seed))
    for start in range(0, rows, batch_size):
        index = order[start : start + batch_size]
        yield packed.input_ids[index], packed.labels[index]


def row_order(n_rows: int, needed: int, seed: int) -> torch.Tensor:
    """Row indices for `needed` draws: seeded permutations of all rows, one epoch after another."""
    g = torch.Generator().manual_seed(seed)
    epochs = -(-needed // n_rows)
    return torch.cat([torch.randperm(n_rows, generator=g) for _ in range(epochs)])[:needed]
