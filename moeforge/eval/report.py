"""The evaluation report written to disk: what was evaluated, how, and the scores, as versioned JSON."""

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from moeforge.errors import ArtifactNotFound, DataError

log = logging.getLogger(__name__)


class EvalConfig(BaseModel):
    """How a model is evaluated; the same config on the same model gives the same report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq_len: int = Field(256, ge=2)                      # tokens per packed row
    max_tokens: int | None = Field(65_536, ge=2)         # per loss (domain, general); whole rows; None: all
    batch_size: int = Field(8, ge=1)                     # rows per forward, prompts per generate
    gsm8k_limit: int = Field(0, ge=0)                    # GSM8K questions answered; 0 skips
    max_new_tokens: int = Field(256, ge=1)               # per GSM8K answer

    @model_validator(mode="after")
    def _rows_fit(self) -> "EvalConfig":
        if self.max_tokens is not None and self.max_tokens < self.seq_len:
            raise ValueError(
                f"max_tokens={self.max_tokens} is below seq_len={self.seq_len}; evaluation takes whole rows, "
                "so raise --max-tokens or lower --seq-len"
            )
        return self


class Gsm8kExample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    gold: str
    predicted: str | None
    generated: str


class Gsm8kScore(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    correct: int = Field(ge=0)
    total: int = Field(ge=1)
    accuracy: float = Field(ge=0, le=1)
    examples: tuple[Gsm8kExample, ...]  # the first few, to read what the model wrote


class EvalReport(BaseModel):
    # Losses can be non-finite (a diverged model); written as NaN/Infinity so they read back.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    version: int = 1
    model: str | None                 # the checkpoint as the caller named it
    model_fingerprint: str | None     # model.fingerprint.model_fingerprint of its weights
    data: str                         # a vendored corpus name (its test split) or a data file
    split: str | None = None          # which split of `data` was scored (heldout, test, …); None: the caller's records
    data_fingerprint: str             # data.fingerprint.fingerprint_records of the records evaluated
    records: int
    config: EvalConfig
    domain_loss: float                # on response tokens, prompts masked
    domain_tokens: int
    general_loss: float               # WikiText-2 test, every token
    general_ppl: float
    general_tokens: int
    gsm8k: Gsm8kScore | None          # None when not asked for (gsm8k_limit 0)
    versions: dict[str, str]


def write_report(report: EvalReport, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.model_dump_json(indent=2) + "\n")
    log.info("evaluation report written to %s", path)


def read_report(path: Path) -> EvalReport:
    path = Path(path)
    if not path.is_file():
        raise ArtifactNotFound(f"{path}: no evaluation report there. Write one with `moeforge eval MODEL --out {path}`.")
    try:
        return EvalReport.model_validate_json(path.read_text())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise DataError(f"{path}: not a valid evaluation report ({problems}). Re-run `moeforge eval`.") from None
