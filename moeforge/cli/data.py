"""`moeforge data`: read a job's data file, split it, and report what training would see."""

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from moeforge.data.fingerprint import fingerprint_records
from moeforge.data.readers import DataSpec, ReadReport, read_records
from moeforge.data.records import Record
from moeforge.data.salts import HELDOUT, VALIDATION, salt_for
from moeforge.data.splits import Splits, check_split, split_records
from moeforge.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, help="Read job data, split it, and report what training would see.")

_SHOWN_SKIPS = 5  # skipped records listed by name; the rest are counted


@app.callback()
def _group() -> None:
    """Read job data, split it, and report what training would see."""
    # A callback keeps `prepare` a subcommand while it is the group's only command.


@app.command()
def prepare(
    path: Annotated[
        Path, typer.Argument(help="A .jsonl/.json, .csv, .txt/.md or .parquet file, or a saved HF dataset folder.")
    ],
    fmt: Annotated[
        Literal["auto", "jsonl", "csv", "text", "parquet", "hf"],
        typer.Option("--format", help="File format; auto goes by suffix."),
    ] = "auto",
    prompt_field: Annotated[
        str | None, typer.Option(help="Field with the prompt (loss masked); needs --response-field.")
    ] = None,
    response_field: Annotated[str | None, typer.Option(help="Field with the response to learn.")] = None,
    text_field: Annotated[
        str | None, typer.Option(help="Field with plain text. With no field flag, the fields are detected "
                                      "(prompt/response, question/answer, instruction/output, messages, text).")
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip bad records (counted and listed) instead of stopping.")
    ] = False,
    max_chars: Annotated[int, typer.Option(min=1, help="Longest record, in characters.")] = 200_000,
    salt: Annotated[
        str | None,
        typer.Option(envvar="MOEFORGE_DATA_SALT", show_envvar=True,
                     help="Secret that decides the held-out split; default: the one remembered for this file (a new one "
                          "the first time), as every other command uses."),
    ] = None,
    validation: Annotated[float, typer.Option(help="Fraction of records for validation (other commands use 0.05).")] = VALIDATION,
    heldout: Annotated[float, typer.Option(help="Fraction of records held out for scoring (other commands use 0.10).")] = HELDOUT,
    tokenizer: Annotated[
        Path | None, typer.Option(help="Local tokenizer folder; also count tokens and packed rows.")
    ] = None,
    seq_len: Annotated[int, typer.Option(min=2, help="Tokens per packed row (with --tokenizer).")] = 256,
) -> None:
    """Read PATH, split it into train / validation / held-out (the split `profile`, `train` and `eval` use), and print
    counts and a fingerprint."""
    check_split(salt or "-", validation, heldout)  # option mistakes first, before reading a large file
    spec = _spec(
        format=fmt,
        prompt_field=prompt_field,
        response_field=response_field,
        text_field=text_field,
        on_error="skip" if skip_bad else "raise",
        max_chars=max_chars,
    )
    report = read_records(path, spec)
    fingerprint = fingerprint_records(report.records)
    from moeforge.cli import settings

    salt, salt_source = salt_for(fingerprint, salt, settings.home())
    splits = split_records(report.records, salt, validation=validation, heldout=heldout)
    counts = {name: f"{len(records):,} records" for name, records in _named(splits)}
    if tokenizer is not None:
        counts = _token_counts(splits, _load_tokenizer(tokenizer), seq_len)
    _print(report, counts, fingerprint, salt_source)


def _spec(**fields: object) -> DataSpec:
    try:
        return DataSpec(**fields)
    except ValidationError as exc:
        problems = "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
        raise ConfigError(f"data options: {problems}.") from None


def _named(splits: Splits) -> list[tuple[str, tuple[Record, ...]]]:
    return [("train", splits.train), ("validation", splits.validation), ("heldout", splits.heldout)]


def _load_tokenizer(directory: Path) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer  # slow to import; only when --tokenizer is given

    if not directory.is_dir():
        raise ConfigError(f"--tokenizer {directory}: no such folder. Pass a folder written by save_pretrained.")
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--tokenizer {directory}: cannot load a tokenizer ({exc}). "
            "Pass a folder with tokenizer.json and tokenizer_config.json, as save_pretrained writes."
        ) from exc


def _token_counts(splits: Splits, tokenizer: "PreTrainedTokenizerBase", seq_len: int) -> dict[str, str]:
    from moeforge.data.formatting import encode_records  # torch and transformers: only when counting tokens
    from moeforge.data.packing import pack_examples

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    counts = {}
    for name, records in _named(splits):
        if not records:
            counts[name] = "0 records"
            continue
        packed = pack_examples(encode_records(records, tokenizer), seq_len, pad_id)
        counts[name] = (
            f"{len(records):,} records, {packed.n_tokens:,} tokens ({packed.n_loss_tokens:,} with loss), "
            f"{packed.input_ids.shape[0]:,} rows of {seq_len}"
        )
    return counts


def _print(report: ReadReport, counts: dict[str, str], fingerprint: str, salt_source: str) -> None:
    console = Console()  # made per call so it writes to the stdout of the moment (tests capture it)
    console.print(f"[bold]{escape(report.path)}[/bold]", highlight=False, soft_wrap=True)
    table = Table(show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("records read", f"{len(report.records):,}")
    table.add_row("skipped", f"{len(report.skipped):,}")
    if report.fields:
        table.add_row("fields", escape(report.fields + (" (detected)" if report.detected else "")))
    for name, value in counts.items():
        table.add_row(name, value)
    console.print(table)
    console.print(f"fingerprint {fingerprint}", highlight=False, soft_wrap=True)  # unwrapped, to copy whole
    console.print(f"salt {escape(salt_source)}", highlight=False, soft_wrap=True)
    for skipped in report.skipped[:_SHOWN_SKIPS]:
        console.print(f"skipped {escape(skipped.source)}: {escape(skipped.reason)}", highlight=False, soft_wrap=True)
    if len(report.skipped) > _SHOWN_SKIPS:
        console.print(f"… and {len(report.skipped) - _SHOWN_SKIPS:,} more skipped")
