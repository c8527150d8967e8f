"""A Record into token ids and labels: prompt tokens masked (-100), response and eos learned.

Prompt and response are tokenized separately, without the tokenizer's special tokens, so
the boundary between them is exact; one eos token closes every example so the model learns
where a response ends.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moeforge.data.records import Record
from moeforge.errors import ConfigError, DataError

if TYPE_CHECKING:  # transformers is slow to import; any tokenizer with this interface works
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label cross-entropy skips (torch and transformers default)


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]  # prompt, response, eos
    labels: tuple[int, ...]     # same length; IGNORE_INDEX on the prompt


def encode_record(record: Record, tokenizer: "PreTrainedTokenizerBase", max_tokens: int | None = None) -> Example:
    """One record as an Example; DataError naming record.source if it is over max_tokens."""
    eos = _eos_id(tokenizer)
    _check_max_tokens(max_tokens)
    prompt = tokenizer.encode(record.prompt, add_special_tokens=False) if record.prompt else []
    response = tokenizer.encode(record.response, add_special_tokens=False)
    return _example(record, prompt, response, eos, max_tokens)


def encode_records(
    records: Sequence[Record], tokenizer: "PreTrainedTokenizerBase", max_tokens: int | None = None
) -> list[Example]:
    """encode_record over many records, tokenized in two batches (fast tokenizers run in parallel)."""
    eos = _eos_id(tokenizer)
    _check_max_tokens(max_tokens)
    if not records:
        return []
    prompts = tokenizer([r.prompt for r in records], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r.response for r in records], add_special_tokens=False)["input_ids"]
    examples = [_example(r, p, s, eos, max_tokens) for r, p, s in zip(records, prompts, responses, strict=True)]
    log.debug("encoded %d records into %d tokens", len(examples), sum(len(e.input_ids) for e in examples))
    return examples


def _example(record: Record, prompt: list[int], response: list[int], eos: int, max_tokens: int | None) -> Example:
    total = len(prompt) + len(response) + 1
    if max_tokens is not None and total > max_tokens:
        raise DataError(
            f"{record.source}: record is {total} tokens ({len(prompt)} prompt + {len(response)} response + 1 eos), "
            f"over max_tokens={max_tokens}. Shorten or split the record, or raise the limit."
        )
    return Example(
        input_ids=(*prompt, *response, eos),
        labels=(IGNORE_INDEX,) * len(prompt) + (*response, eos),
    )


def _eos_id(tokenizer: "PreTrainedTokenizerBase") -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(
            f"tokenizer {tokenizer.name_or_path or type(tokenizer).__name__!r} has no eos token; every example "
            "ends with one so the model learns to stop. Set eos_token on the tokenizer (e.g. in tokenizer_config.json)."
        )
    return eos


def _check_max_tokens(max_tokens: int | None) -> None:
    if max_tokens is not None and max_tokens < 2:
        raise ConfigError(f"max_tokens must be at least 2 (got {max_tokens}): a response token and the eos token.")
