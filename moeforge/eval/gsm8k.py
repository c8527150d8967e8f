"""GSM8K accuracy: greedy answers to the questions, scored by exact match of the final number.

Cobbe et al. 2021 (arXiv 2110.14168). A worked answer ends with a line "#### <number>"; the
prediction is the number after the model's last "####" (or, if it wrote none, its last number),
compared with the gold number after both are normalised ("1,234" → "1234", "$5" → "5",
"12.0" → "12"). Generation is greedy, so a score is a property of the weights alone.
"""

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from moeforge.data.records import Record
from moeforge.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

ANSWER_MARK = "####"
_NUMBER = re.compile(r"-?\$? ?\d[\d,]*(?:\.\d+)?")
# The answer is complete once the "####" line has a value and ends, or a blank line follows "####".
_FINISHED = re.compile(r"####[ \t]*\S[^\n]*\n|####[\s\S]*?\n[ \t]*\n")

ProgressCallback = Callable[[int, int], None]  # (prompts answered, prompts in all)


@dataclass(frozen=True)
class Graded:
    prompt: str      # the record's prompt: "Question: …\nAnswer:" for the vendored corpus
    gold: str        # normalised gold number
    predicted: str | None  # normalised predicted number; None if the generation holds none
    generated: str   # the generated continuation, cut where the answer ends

    @property
    def correct(self) -> bool:
        return self.predicted == self.gold


@dataclass(frozen=True)
class AccuracyResult:
    correct: int
    total: int
    examples: tuple[Graded, ...]  # the first few, to read what the model wrote

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


def extract_answer(text: str) -> str | None:
    """The normalised number after the last "####"; with no "####", the last number in `text`; else None."""
    if ANSWER_MARK in text:
        tail = text.rsplit(ANSWER_MARK, 1)[1].split("\n", 1)[0]
        match = _NUMBER.search(tail)
        return _normalise(match.group()) if match else None
    numbers = _NUMBER.findall(text)
    return _normalise(numbers[-1]) if numbers else None


def gold_answer(record: Record) -> str:
    """The normalised number on the record's "#### <number>" line; DataError naming the record if absent."""
    answer = extract_answer(record.response) if ANSWER_MARK in record.response else None
    if answer is None:
        raise DataError(
            f"{record.source}: the response has no final answer line '#### <number>' "
            f"(it ends: {record.response[-60:]!r}). GSM8K scoring needs one per record; fix or drop the record."
        )
    return answer


def generate_answers(
    model,
    tokenizer: "PreTrainedTokenizerBase",
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    on_progress: ProgressCallback | None = None,
) -> list[str]:
    """Greedy continuations of `prompts`, each cut where its answer ends (eos, or the end of the "####" line).

    Prompts are batched with left padding and an attention mask, which gives the same
    continuations as one prompt at a time.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(f"batch_size and max_new_tokens must be at least 1 (got {batch_size}, {max_new_tokens}).")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(f"tokenizer {tokenizer.name_or_path!r} has no eos token; generation needs one to stop.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = [tokenizer.encode(p, add_special_tokens=False) for p in prompts[start : start + batch_size]]
        texts += _generate_batch(model, tokenizer, batch, max_new_tokens=max_new_tokens, eos=eos, pad=pad)
        if on_progress is not None:
            on_progress(len(texts), len(prompts))
    return texts


def gsm8k_accuracy(
    model,
    tokenizer: "PreTrainedTokenizerBase",
    records: Sequence[Record],
    *,
    limit: int | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    shown: int = 5,
    on_progress: ProgressCallback | None = None,
) -> AccuracyResult:
    """Exact-match accuracy of greedy answers on the first `limit` records (all when None)."""
    records = list(records[:limit] if limit is not None else records)
    if not records:
        raise DataError("no GSM8K records to score; pass records, or a limit of at least 1.")
    golds = [gold_answer(r) for r in records]  # a record without a gold answer fails before any generation
    generated = generate_answers(
        model, tokenizer, [r.prompt for r in records],
        max_new_tokens=max_new_tokens, batch_size=batch_size, on_progress=on_progress,
    )
    graded = [
        Graded(prompt=r.prompt, gold=g, predicted=extract_answer(text), generated=text)
        for r, g, text in zip(records, golds, generated, strict=True)
    ]
    correct = sum(g.correct for g in graded)
    log.info("GSM8K: %d/%d correct (%.1f%%)", correct, len(graded), 100 * correct / len(graded))
    return AccuracyResult(correct=correct, total=len(graded), examples=tuple(graded[:shown]))


def _normalise(number: str) -> str:
    value = number.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    if value in ("-0", ""):
        value = "0"
    return value


def _cut(text: str) -> str:
    """The continuation up to the end of its answer: the "####" line, or the blank line after "####"."""
    match = _FINISHED.search(text)
    return text[: match.end()].rstrip() if match else text


class _AnswerFinished:
    """A stopping criterion: a row is done once its decoded continuation holds a finished answer."""

    def __init__(self, tokenizer: "PreTrainedTokenizerBase", prompt_len: int):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.prompt_len :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return torch.tensor([_FINISHED.search(t) is not None for t in texts], device=input_ids.device)


@torch.no_grad()
def _generate_batch(
    model, tokenizer: "PreTrainedTokenizerBase", batch: list[list[int]], *, max_new_tokens: int, eos: int, pad: int
) -> list[str]:
    from transformers import StoppingCriteriaList  # transformers is slow to import; only when generating

    width = max(len(ids) for ids in batch)
    if width == 0:
        raise DataError("an empty prompt cannot be answered; every GSM8K record needs its question as the prompt.")
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
    device = next(model.parameters()).device
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        stopping_criteria=StoppingCriteriaList([_AnswerFinished(tokenizer, width)]),
    )
    return [_cut(text) for text in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]
