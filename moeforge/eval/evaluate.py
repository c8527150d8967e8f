"""`evaluate`: one model, one domain's records, one config → an EvalReport (domain, general, GSM8K).

The three measures of an ESFT fine-tune: loss on the domain's held-out responses,
WikiText-2 perplexity as the forgetting check, and, for maths, GSM8K accuracy.
"""

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from moeforge.data.fingerprint import fingerprint_records
from moeforge.data.records import Record
from moeforge.eval.domain import domain_loss
from moeforge.eval.general import general_perplexity
from moeforge.eval.gsm8k import AccuracyResult, ProgressCallback, gsm8k_accuracy
from moeforge.eval.report import EvalConfig, EvalReport, Gsm8kExample, Gsm8kScore
from moeforge.versions import software_versions

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

STAGES = ("domain loss", "general loss", "GSM8K answers")
StageCallback = Callable[[str, int, int], object]  # (stage, done, total)


def evaluate(
    model,
    tokenizer: "PreTrainedTokenizerBase",
    records: Sequence[Record],
    config: EvalConfig,
    *,
    data: str,
    split: str | None = None,
    model_source: str | None = None,
    model_fingerprint: str | None = None,
    on_progress: StageCallback | None = None,
) -> EvalReport:
    """Domain loss on `records`, WikiText-2 perplexity and (gsm8k_limit > 0) GSM8K accuracy on `records`.

    `on_progress(stage, done, total)` as each stage (STAGES) goes: rows scored, then questions answered."""
    def stage(name: str) -> ProgressCallback | None:
        return None if on_progress is None else lambda done, total: on_progress(name, done, total)

    rows = dict(seq_len=config.seq_len, max_tokens=config.max_tokens, batch_size=config.batch_size)
    domain = domain_loss(model, tokenizer, records, **rows, on_batch=stage(STAGES[0]))
    general = general_perplexity(model, tokenizer, **rows, on_batch=stage(STAGES[1]))
    gsm8k = None
    if config.gsm8k_limit > 0:
        result = gsm8k_accuracy(
            model, tokenizer, records, limit=config.gsm8k_limit, max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size, on_progress=stage(STAGES[2]),
        )
        gsm8k = _score(result)
    log.info(
        "%s: domain loss %.4f, general ppl %.2f%s", data, domain.loss, general.perplexity,
        f", GSM8K {gsm8k.correct}/{gsm8k.total}" if gsm8k else "",
    )
    return EvalReport(
        model=model_source,
        model_fingerprint=model_fingerprint,
        data=data,
        split=split,
        data_fingerprint=fingerprint_records(records),
        records=len(records),
        config=config,
        domain_loss=domain.loss,
        domain_tokens=domain.tokens,
        general_loss=general.loss,
        general_ppl=general.perplexity,
        general_tokens=general.tokens,
        gsm8k=gsm8k,
        versions=software_versions(),
    )


def _score(result: AccuracyResult) -> Gsm8kScore:
    examples = tuple(
        Gsm8kExample(prompt=g.prompt, gold=g.gold, predicted=g.predicted, generated=g.generated)
        for g in result.examples
    )
    return Gsm8kScore(correct=result.correct, total=result.total, accuracy=result.accuracy, examples=examples)
