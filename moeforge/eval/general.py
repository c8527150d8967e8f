"""General language-model perplexity on WikiText-2 test: the forgetting check after fine-tuning.

`general_reference_rows` is the other half: the rows of WikiText-2 *validation* a job's drift
budget is enforced on while it trains (network/merge.py's guard), so the test split that reports
the outcome is never the one the outcome was steered by.

Every token of the articles is scored (plain text has no prompt), in file order, so two
models evaluated with the same tokenizer, seq_len and max_tokens see the same tokens.
"""

import logging
from typing import TYPE_CHECKING

from moeforge.data.corpora import load_corpus
from moeforge.errors import ConfigError
from moeforge.eval.domain import LossResult, packed_rows, rows_loss

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

GENERAL_CORPUS = "wikitext"
DEFAULT_MAX_TOKENS = 65_536


def general_perplexity(
    model,
    tokenizer: "PreTrainedTokenizerBase",
    *,
    seq_len: int,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    batch_size: int = 8,
    on_batch=None,
) -> LossResult:
    """Loss (and .perplexity = exp(loss)) on the first max_tokens // seq_len rows of WikiText-2 test."""
    records = load_corpus(GENERAL_CORPUS, "test")
    input_ids, labels = packed_rows(tokenizer, records, seq_len=seq_len, max_tokens=max_tokens)
    result = rows_loss(model, input_ids, labels, batch_size=batch_size, on_batch=on_batch)
    log.debug("WikiText-2 test: loss %.4f, perplexity %.2f over %d tokens", result.loss, result.perplexity, result.tokens)
    return result


def general_mix_rows(tokenizer: "PreTrainedTokenizerBase", *, seq_len: int, skip_rows: int) -> tuple:
    """(input_ids, labels) of WikiText-2 validation past its first `skip_rows` rows (the guard's): the general text a
    job's miners may mix into their training (JobSpec.general_mix), never the rows the guard or the report score."""
    input_ids, labels = packed_rows(tokenizer, load_corpus(GENERAL_CORPUS, "train"), seq_len=seq_len)
    if input_ids.shape[0] <= skip_rows:
        raise ConfigError(f"WikiText-2 validation has {input_ids.shape[0]} rows of {seq_len} tokens, none past the guard's "
                          f"first {skip_rows} to mix into training; lower general_rows or general_mix.")
    return input_ids[skip_rows:], labels[skip_rows:]


def general_reference_rows(tokenizer: "PreTrainedTokenizerBase", *, seq_len: int, rows: int) -> tuple:
    """(input_ids, labels) of the first `rows` rows of WikiText-2 validation (the vendored corpus's "train" split)."""
    input_ids, labels = packed_rows(tokenizer, load_corpus(GENERAL_CORPUS, "train"), seq_len=seq_len, max_tokens=rows * seq_len)
    log.debug("general reference: %d rows of WikiText-2 validation", input_ids.shape[0])
    return input_ids, labels
