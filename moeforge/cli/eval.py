"""`moeforge eval`: a checkpoint's domain loss, WikiText-2 perplexity and GSM8K accuracy, as a table and JSON."""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from moeforge.cli.inputs import DeviceOption, job_records, load_checkpoint, output_file, validated
from moeforge.data.corpora import DOMAINS
from moeforge.data.records import Record

if TYPE_CHECKING:
    from moeforge.eval.report import EvalConfig, EvalReport

log = logging.getLogger(__name__)

_MATH_GSM8K_LIMIT = 50  # GSM8K questions answered by default when the data is the vendored maths corpus


def eval_cmd(
    model: Annotated[Path, typer.Argument(help="Checkpoint directory with its tokenizer (save_pretrained).")],
    data: Annotated[
        str,
        typer.Option(help=f"A vendored corpus ({', '.join(DOMAINS)}; its test split) or a data file to score."),
    ] = "math",
    prompt_field: Annotated[
        str | None, typer.Option(help="Data file field with the prompt (loss masked); needs --response-field.")
    ] = None,
    response_field: Annotated[str | None, typer.Option(help="Data file field with the response scored.")] = None,
    text_field: Annotated[
        str | None, typer.Option(help="Data file field with plain text, when no prompt/response fields are named.")
    ] = None,
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
    """Evaluate a checkpoint: loss on the data's responses, WikiText-2 perplexity, GSM8K accuracy."""
    if gsm8k_limit is None:
        gsm8k_limit = _MATH_GSM8K_LIMIT if data == "math" else 0
    from moeforge.eval.report import EvalConfig

    config = validated(
        EvalConfig, seq_len=seq_len, max_tokens=max_tokens, batch_size=batch_size, gsm8k_limit=gsm8k_limit,
        max_new_tokens=max_new_tokens,
    )
    if out is not None:
        output_file(out, "--out")
    records = job_records(data, "test", prompt_field=prompt_field, response_field=response_field, text_field=text_field)
    report = _evaluate(model, records, config, data, device)
    if out is not None:
        from moeforge.eval.report import write_report

        write_report(report, out)
    _print(report, out)


def _evaluate(directory: Path, records: tuple[Record, ...], config: "EvalConfig", data: str, device: str) -> "EvalReport":
    from moeforge.eval.evaluate import evaluate
    from moeforge.model.fingerprint import model_fingerprint

    model, tokenizer = load_checkpoint(directory, device)
    with _gsm8k_bar(config.gsm8k_limit) as on_progress:
        return evaluate(
            model, tokenizer, records, config,
            data=data, model_source=str(directory), model_fingerprint=model_fingerprint(model),
            on_progress=on_progress,
        )


@contextmanager
def _gsm8k_bar(limit: int) -> Iterator[Callable[[int, int], None] | None]:
    """A bar on stderr that advances as GSM8K answers are generated; nothing when GSM8K is skipped."""
    if limit == 0:
        yield None
        return
    columns = (TextColumn("[bold]GSM8K answers"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("gsm8k", total=limit)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield on_progress


def _print(report: "EvalReport", out: Path | None) -> None:
    console = Console()  # made per call so it writes to the stdout of the moment (tests capture it)
    table = Table(title=f"{escape(report.model or '')} on {escape(report.data)}")
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
