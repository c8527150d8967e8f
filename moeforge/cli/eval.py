"""`moeforge eval`: a checkpoint's domain loss, WikiText-2 perplexity and GSM8K accuracy, as a table and JSON."""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from moeforge.cli.inputs import (
    DataSaltOpt,
    DeviceOption,
    MessagesFieldOpt,
    PromptFieldOpt,
    ResponseFieldOpt,
    TextFieldOpt,
    load_checkpoint,
    output_file,
    split_data,
    validated,
)
from moeforge.data.corpora import DOMAINS
from moeforge.data.records import Record
from moeforge.errors import ConfigError

if TYPE_CHECKING:
    from moeforge.eval.report import EvalConfig, EvalReport

log = logging.getLogger(__name__)

SplitChoice = Literal["heldout", "validation", "train", "all"]
_MATH_GSM8K_LIMIT = 50  # GSM8K questions answered by default when the data is the vendored maths corpus


def eval_cmd(
    model: Annotated[Path, typer.Argument(help="Checkpoint directory with its tokenizer (save_pretrained): the base model "
                                               "when --delta is given.")],
    delta: Annotated[Path | None, typer.Option(
        "--delta", help="A delta folder written by `moeforge train` (OUT/delta), applied to MODEL before evaluating.")] = None,
    data: Annotated[
        str,
        typer.Option(help=f"A data file (its held-out split, see --split) or a vendored corpus ({', '.join(DOMAINS)}; "
                          "its test split)."),
    ] = "math",
    split: Annotated[SplitChoice, typer.Option(
        "--split", help="Which split of a data file to score: heldout (never trained on: `train` and `profile` use the train split of the "
                         "same salted split), validation, train, or all.")] = "heldout",
    prompt_field: PromptFieldOpt = None,
    response_field: ResponseFieldOpt = None,
    text_field: TextFieldOpt = None,
    messages_field: MessagesFieldOpt = None,
    salt: DataSaltOpt = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens scored per loss (domain, general), in whole rows.")] = 65_536,
    seq_len: Annotated[int, typer.Option(help="Tokens per packed row.")] = 256,
    gsm8k_limit: Annotated[
        int | None,
        typer.Option(help=f"GSM8K questions to answer from the data; 0 skips (default {_MATH_GSM8K_LIMIT} for math, else 0)."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest generated GSM8K answer, in tokens.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass; prompts per generate call.")] = 8,
    out: Annotated[Path | None, typer.Option(help="Write the report as JSON to this file.")] = None,
    device: DeviceOption = "auto",
) -> None:
    """Evaluate a checkpoint (or a base model with a trained --delta): loss on the data's held-out responses,
    WikiText-2 perplexity, GSM8K accuracy."""
    if gsm8k_limit is None:
        gsm8k_limit = _MATH_GSM8K_LIMIT if data == "math" else 0
    from moeforge.eval.report import EvalConfig

    config = validated(
        EvalConfig, seq_len=seq_len, max_tokens=max_tokens, batch_size=batch_size, gsm8k_limit=gsm8k_limit,
        max_new_tokens=max_new_tokens,
    )
    if out is not None:
        output_file(out, "--out")
    if delta is not None and not (delta / "manifest.json").is_file():
        raise ConfigError(f"--delta {delta}: not a delta folder (no manifest.json). Pass the delta/ folder that "
                          "`moeforge train --out OUT` wrote (OUT/delta).")
    records, note = split_data(data, split, salt=salt, prompt_field=prompt_field, response_field=response_field,
                               text_field=text_field, messages_field=messages_field)
    _say(f"scoring {note.describe()}")
    report = _evaluate(model, delta, records, config, data, note.split, device)
    if out is not None:
        from moeforge.eval.report import write_report

        write_report(report, out)
    _print(report, out)


def _evaluate(directory: Path, delta: Path | None, records: tuple[Record, ...], config: "EvalConfig", data: str,
              split: str, device: str) -> "EvalReport":
    from moeforge.eval.evaluate import evaluate
    from moeforge.model.fingerprint import model_fingerprint

    model, tokenizer = load_checkpoint(directory, device)
    source = str(directory)
    if delta is not None:
        from moeforge.model.slices import apply_slice, load_slice

        piece = load_slice(delta, expect_fingerprint=model_fingerprint(model))
        apply_slice(model, piece)
        source = f"{directory} + {delta}"
        _say(f"applied the delta in {delta} ({len(piece.slots)} experts) to {directory}")
    with _eval_bars(config.gsm8k_limit) as on_progress:
        return evaluate(
            model, tokenizer, records, config,
            data=data, split=split, model_source=source, model_fingerprint=model_fingerprint(model),
            on_progress=on_progress,
        )


def _say(text: str) -> None:
    Console().print(escape(text), highlight=False, soft_wrap=True)


@contextmanager
def _eval_bars(gsm8k_limit: int) -> Iterator[Callable[[str, int, int], None]]:
    """One bar per stage on stderr (domain loss, general loss, GSM8K answers when asked), advancing as it goes."""
    from moeforge.eval.evaluate import STAGES

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        stages = STAGES if gsm8k_limit > 0 else STAGES[:2]
        tasks = {name: progress.add_task(name, total=gsm8k_limit if name == STAGES[2] else None) for name in stages}

        def on_progress(stage: str, done: int, total: int) -> None:
            progress.update(tasks[stage], completed=done, total=total)

        yield on_progress


def _print(report: "EvalReport", out: Path | None) -> None:
    console = Console()  # made per call so it writes to the stdout of the moment (tests capture it)
    table = Table(title=f"{escape(report.model or '')} on {escape(report.data)}"
                        + (f" ({escape(report.split)} split)" if report.split else ""))
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("over")
    table.add_row("domain loss (responses)", f"{report.domain_loss:.4f}", f"{report.domain_tokens:,} tokens")
    table.add_row("general loss (WikiText-2 test)", f"{report.general_loss:.4f}", f"{report.general_tokens:,} tokens")
    table.add_row("general perplexity", f"{report.general_ppl:,.2f}", "")
    if report.gsm8k is not None:
        score = report.gsm8k
        table.add_row("GSM8K accuracy", f"{score.accuracy:.1%}", f"{score.correct}/{score.total} questions")
    console.print(table)
    if out is not None:
        console.print(f"report written to {escape(str(out))}", highlight=False, soft_wrap=True)
