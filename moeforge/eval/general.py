"""General language-model perplexity on WikiText-2 test: the forgetting check after fine-tuning.

Every token of the articles is scored (plain text has no prompt), in file order, so two
models evaluated with the same tokenizer, seq_len and max_tokens see the same tokens.
"""

import logging
from typing import TYPE_CHECKING

from moeforge.data.corpora import load_corpus
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
