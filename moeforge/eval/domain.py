"""Held-out loss on a domain: the mean cross-entropy of the response tokens, prompts masked.

Records are encoded as training encodes them (prompt masked, eos appended and scored) and
packed into rows of seq_len; the loss is `model.loss.mean_token_loss` over those rows, so
evaluation and training count the same tokens the same way.
"""

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from moeforge.data.formatting import IGNORE_INDEX, Example, encode_records
from moeforge.data.packing import pack_examples
from moeforge.data.records import Record
from moeforge.errors import ConfigError, DataError
from moeforge.model.loss import mean_token_loss

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

_LN_MAX_FLOAT = 709.0


@dataclass(frozen=True)
class LossResult:
    loss: float  # nats per scored token
    tokens: int  # positions scored: labelled tokens that some earlier token in their row predicts

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < _LN_MAX_FLOAT else math.inf  # a diverged model overflows exp


def domain_loss(
    model,
    tokenizer: "PreTrainedTokenizerBase",
    records: Sequence[Record],
    *,
    seq_len: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
    on_batch=None,
) -> LossResult:
    """Mean loss on the response (and eos) tokens of `records`, packed in order into rows of seq_len.

    max_tokens caps the evaluation at the first max_tokens // seq_len whole rows.
    """
    input_ids, labels = packed_rows(tokenizer, records, seq_len=seq_len, max_tokens=max_tokens)
    if not (labels[:, 1:] != IGNORE_INDEX).any():
        raise DataError(
            f"the first {len(labels)} rows of {seq_len} tokens (max_tokens={max_tokens}) hold only prompt tokens, "
            f"so there is no response to score (the first record, {records[0].source}, has a long prompt). "
            "Raise --max-tokens."
        )
    result = rows_loss(model, input_ids, labels, batch_size=batch_size, on_batch=on_batch)
    log.debug("domain loss %.4f over %d tokens (%d rows of %d)", result.loss, result.tokens, len(input_ids), seq_len)
    return result


def packed_rows(
    tokenizer: "PreTrainedTokenizerBase", records: Sequence[Record], *, seq_len: int, max_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) [N, seq_len] of the records packed in order, cut to max_tokens // seq_len rows."""
    if max_tokens is not None and max_tokens < seq_len:
        raise ConfigError(
            f"max_tokens={max_tokens} is below seq_len={seq_len}; evaluation takes whole rows of seq_len tokens. "
            f"Raise --max-tokens to at least {seq_len}, or lower --seq-len."
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = None if max_tokens is None else max_tokens // seq_len
    examples = _encode_prefix(records, tokenizer, None if rows is None else rows * seq_len)
    packed = pack_examples(examples, seq_len, pad_id)
    return packed.input_ids[:rows], packed.labels[:rows]


def _encode_prefix(records: Sequence[Record], tokenizer: "PreTrainedTokenizerBase", needed: int | None) -> list[Example]:
    """The leading records' examples, enough to fill `needed` tokens (all records when None).

    Packing concatenates in order, so the rows cut from a prefix are the rows cut from the
    whole; encoding in doubling chunks spares tokenizing a corpus to score its first rows.
    """
    if needed is None:
        return encode_records(records, tokenizer)
    examples: list[Example] = []
    have, start, chunk = 0, 0, 16
    while start < len(records) and have < needed:
        batch = encode_records(records[start : start + chunk], tokenizer)
        examples += batch
        have += sum(len(e.input_ids) for e in batch)
        start, chunk = start + chunk, chunk * 2
    return examples


def rows_loss(model, input_ids: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 8, on_batch=None) -> LossResult:
    """mean_token_loss over packed rows, with the number of positions it scored."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1 (got {batch_size}).")
    tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())  # a row's first token has nothing before it to predict it
    device = next(model.parameters()).device
    loss = mean_token_loss(model, input_ids.to(device), labels.to(device), batch_size=batch_size, on_batch=on_batch)
    return LossResult(loss=loss, tokens=tokens)
