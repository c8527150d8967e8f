"""`build_testbed`: tokenizer, model, pre-training, held-out evaluation, written once and cached.

The output is a standard checkpoint directory (config.json, model.safetensors, tokenizer files)
that `AutoModelForCausalLM` and `AutoTokenizer` load, plus `testbed.json`: the exact config,
versions, data fingerprint and per-domain held-out losses. A build is written to a temporary
folder and renamed into place, so an interrupted build never looks finished.
"""

import json
import logging
import math
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from transformers import AutoModelForCausalLM

from moeforge.atomic import write_folder
from moeforge.data.corpora import load_corpus
from moeforge.data.fingerprint import fingerprint_records
from moeforge.data.formatting import encode_records
from moeforge.data.packing import pack_examples
from moeforge.data.records import Record
from moeforge.errors import ConfigError
from moeforge.model.loss import mean_token_loss
from moeforge.model.sizing import size_of_model
from moeforge.testbed.config import EVAL_DOMAINS, GENERAL_DOMAINS, TestbedConfig, deepseek_config
from moeforge.testbed.pretrain import pretrain
from moeforge.train.metrics import StepCallback
from moeforge.testbed.tokenizer import train_tokenizer
from moeforge.versions import software_versions

log = logging.getLogger(__name__)

REPORT = "testbed.json"


class TestbedReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    __test__ = False

    version: int = 1
    config: TestbedConfig
    vocab_size: int
    ln_vocab: float
    params: int
    train_tokens: int
    train_seconds: float
    train_tokens_per_s: float
    final_train_loss: float
    domain_losses: dict[str, float]  # held-out loss per domain (math was never trained on)
    data_fingerprint: str
    versions: dict[str, str]


def build_testbed(
    cfg: TestbedConfig, out_dir: Path, *, force: bool = False, on_step: StepCallback | None = None
) -> TestbedReport:
    """Build (or reuse the cached build of) the testbed described by `cfg` into `out_dir`."""
    out_dir = Path(out_dir)
    if not force:
        cached = read_report(out_dir)
        if cached is not None:
            if cached.config != cfg:
                raise ConfigError(
                    f"{out_dir} holds a testbed built with another config; pass --force to rebuild it, "
                    "or choose another --out."
                )
            log.info("reusing the testbed in %s", out_dir)
            return cached
    torch.manual_seed(cfg.seed)
    train_records = _general_mix(cfg)
    texts = [r.text for r in train_records]
    log.info("training a %d-token byte-level BPE on %d records", cfg.vocab_size, len(texts))
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    train = pack_examples(encode_records(train_records, tokenizer), cfg.seq_len, tokenizer.pad_token_id)
    config = deepseek_config(cfg, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    log.info("pre-training %s for %d steps on %d tokens", type(model).__name__, cfg.steps, train.n_tokens)
    started = time.perf_counter()
    result = pretrain(
        model, train.input_ids, train.labels,
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, aux_loss_coef=cfg.aux_loss_coef, seed=cfg.seed, on_step=on_step,
    )
    seconds = time.perf_counter() - started
    losses = {d: mean_token_loss(model, *eval_rows(d, tokenizer, cfg)) for d in EVAL_DOMAINS}
    tokens = cfg.steps * cfg.batch_size * cfg.seq_len
    report = TestbedReport(
        config=cfg,
        vocab_size=len(tokenizer),
        ln_vocab=math.log(len(tokenizer)),
        params=size_of_model(model).total_params,
        train_tokens=tokens,
        train_seconds=round(seconds, 2),
        train_tokens_per_s=round(tokens / seconds, 1),
        final_train_loss=result.final_loss,
        domain_losses={d: round(v, 4) for d, v in losses.items()},
        data_fingerprint=fingerprint_records(train_records),
        versions=software_versions(),
    )
    _write(out_dir, model, tokenizer, report)
    return report


def read_report(out_dir: Path) -> TestbedReport | None:
    """The report of a finished build in `out_dir`, or None if there is none."""
    path = Path(out_dir) / REPORT
    if not path.is_file():
        return None
    return TestbedReport.model_validate_json(path.read_text())


def eval_rows(domain: str, tokenizer, cfg: TestbedConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of the held-out rows `domain` is scored on: at most eval_tokens_per_domain.

    Every token is scored (prompts included): this is language-model loss on the domain's text.
    """
    records = _plain_text(load_corpus(domain, "test"))
    packed = pack_examples(encode_records(records, tokenizer), cfg.seq_len, tokenizer.pad_token_id)
    rows = max(1, cfg.eval_tokens_per_domain // cfg.seq_len)
    return packed.input_ids[:rows], packed.labels[:rows]


def _general_mix(cfg: TestbedConfig):
    """Training text of the general domains, interleaved in a seeded order (maths kept out)."""
    records = []
    for domain in GENERAL_DOMAINS:
        chosen, chars = [], 0
        for record in load_corpus(domain, "train"):
            if cfg.corpus_chars is not None and chars >= cfg.corpus_chars:
                break
            chosen.append(record)
            chars += len(record.text)
        records.extend(_plain_text(chosen))
    g = torch.Generator().manual_seed(cfg.seed)
    return [records[i] for i in torch.randperm(len(records), generator=g).tolist()]


def _plain_text(records) -> list[Record]:
    """Pre-training learns every token: prompt and response become one unmasked text."""
    return [Record(prompt="", response=r.text, source=r.source) for r in records]


def _write(out_dir: Path, model, tokenizer, report: TestbedReport) -> None:
    def fill(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / REPORT).write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")

    write_folder(out_dir, fill)
    log.info("testbed written to %s", out_dir)
