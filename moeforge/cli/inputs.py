"""What several commands read the same way: option groups, job data, a checkpoint with its tokenizer.

Each turns a user's mistake into one ConfigError/DataError/ArtifactNotFound that names the flag,
file or folder, so every command reports bad input alike.
"""

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from pydantic import BaseModel, ValidationError

from moeforge.data.corpora import DOMAINS
from moeforge.errors import ArtifactNotFound, ConfigError
from moeforge.json_file import shown, validation_problems

if TYPE_CHECKING:
    from moeforge.data.salts import SplitName


def validated(model_class: type[BaseModel], **fields):
    """`model_class(**fields)`, or one ConfigError naming every bad flag (`seq_len` → `--seq-len`) and its value."""
    infinite = [f"{flag(name)} {value}" for name, value in fields.items() if isinstance(value, float) and not math.isfinite(value)]
    if infinite:
        raise ConfigError(f"bad option: {', '.join(infinite)}: expected a finite number.")
    try:
        return model_class(**fields)
    except ValidationError as exc:
        def rename(loc: tuple, given: object) -> str:
            if not loc:
                return ""
            name = str(loc[0])
            return f"{flag(name)} {shown(fields[name] if name in fields else given)}"

        problems = validation_problems(exc, rename)
        for name in fields:  # a check across fields names them in its message: say which flags they are
            problems = re.sub(rf"(?<![-\w]){re.escape(name)}\b", flag(name), problems)
        raise ConfigError(f"bad option: {problems}.") from None


def flag(name: str) -> str:
    """The CLI flag of a config field: `seq_len` → `--seq-len`."""
    return "--" + name.replace("_", "-")


def output_dir(path: Path, name: str) -> Path:
    """PATH, to be created as a folder; ConfigError naming NAME (the flag) if a file is in the way."""
    _no_file_above(path, name)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name} {path}: is a file; expected a folder to write into. Pass a folder path, or move the file.")
    return path


def output_file(path: Path, name: str) -> Path:
    """PATH, to be written as a file; ConfigError naming NAME (the flag) if a folder is in its place or a file above it."""
    _no_file_above(path, name)
    if path.is_dir():
        raise ConfigError(f"{name} {path}: is a folder; expected a file name to write. Pass a path such as {path / 'out.json'}.")
    return path


def _no_file_above(path: Path, name: str) -> None:
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{name} {path}: {parent} is a file, so nothing can be written beneath it. "
                                  "Pass a path inside a folder.")
            return


PromptFieldOpt = Annotated[str | None, typer.Option("--prompt-field", help=(
    "Data file field with the prompt (loss masked); with --response-field. Without field flags the fields are detected: "
    "prompt/response, question/answer, instruction/output, messages, text."))]
ResponseFieldOpt = Annotated[str | None, typer.Option("--response-field", help="Data file field with the response to learn.")]
TextFieldOpt = Annotated[str | None, typer.Option("--text-field", help="Data file field with plain text, all of it learnt.")]
MessagesFieldOpt = Annotated[str | None, typer.Option(
    "--messages-field", help="Data file field with a chat list ({role, content}); the last, assistant message is learnt.")]
DataSaltOpt = Annotated[str | None, typer.Option(
    "--salt", envvar="MOEFORGE_DATA_SALT", show_envvar=True,
    help="Secret that splits a data file into train / validation / held-out; default: the one remembered for the file.")]


def job_records(
    data: str,
    split: Literal["train", "test"],
    *,
    flag: str = "--data",
    prompt_field: str | None = None,
    response_field: str | None = None,
    text_field: str | None = None,
    messages_field: str | None = None,
):
    """Every record of a data file read with the field flags (detected when none is given), or a vendored corpus's
    `split` when `data` names one."""
    return _read_data(data, split, flag, prompt_field=prompt_field, response_field=response_field, text_field=text_field,
                      messages_field=messages_field)[0]


def split_data(
    data: str,
    split: "SplitName",
    *,
    flag: str = "--data",
    salt: str | None = None,
    **fields: str | None,
):
    """(records, SplitNote): a data file's `split` under its one salt (moeforge.data.salts), or a vendored corpus's
    own split (train for "train", else test). Every command that reads job data for itself goes through here."""
    from moeforge.cli import settings
    from moeforge.data.fingerprint import fingerprint_records
    from moeforge.data.salts import SplitNote, choose, salt_for

    corpus_split = "train" if split == "train" else "test"
    records, report = _read_data(data, corpus_split, flag, **fields)
    if report is None:
        return records, SplitNote(data=data, data_fingerprint=None, split=corpus_split, records=len(records),
                                  counts={corpus_split: len(records)}, salt_source="none: the vendored corpus's own split")
    fingerprint = fingerprint_records(records)
    secret, source = salt_for(fingerprint, salt, settings.home())
    chosen, splits = choose(records, split, secret)
    counts = {"train": len(splits.train), "validation": len(splits.validation), "heldout": len(splits.heldout)}
    read = (f"fields {report.fields}" + (", detected" if report.detected else "")) if report.fields else "plain text"
    return chosen, SplitNote(data=f"{data} ({read})", data_fingerprint=fingerprint, split=split, records=len(chosen),
                             counts=counts, salt_source=source)


def _read_data(data: str, corpus_split: str, flag: str, **fields: str | None):
    """(records, ReadReport or None for a vendored corpus)."""
    from moeforge.data.corpora import load_corpus
    from moeforge.data.readers import DataSpec, read_records

    given = {name: value for name, value in fields.items() if value is not None}
    path = Path(data)
    if not path.exists() and data in DOMAINS:
        if given:
            named = ", ".join(f"--{name.replace('_', '-')}" for name in given)
            raise ConfigError(
                f"{named} apply to data files, but {data!r} is a vendored corpus with its own fields. "
                "Drop the flags, or pass a data file."
            )
        return load_corpus(data, corpus_split), None
    if not path.exists():
        raise ConfigError(
            f"{flag} {data!r}: neither a vendored corpus ({', '.join(DOMAINS)}) nor an existing data file or folder. "
            f"Check the path (relative paths start at {Path.cwd()})."
        )
    report = read_records(path, validated(DataSpec, **given))
    return report.records, report


def selected_on(selection, experts: Path, base, model: Path) -> str:
    """BASE's fingerprint; ConfigError if the expert config EXPERTS was selected on another base model."""
    from moeforge.model.fingerprint import model_fingerprint

    fingerprint = model_fingerprint(base)
    if selection.base_fingerprint and selection.base_fingerprint != fingerprint:
        raise ConfigError(
            f"{experts}: selected on base model {selection.base_fingerprint[:16]}…, but {model} is {fingerprint[:16]}…. "
            "Profile and select on the model you use."
        )
    return fingerprint


DEVICE_HELP = "Where the model runs: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N."
DeviceOption = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]


def load_checkpoint(source: str | Path, device: str = "cpu"):
    """(model on DEVICE, tokenizer) of a checkpoint folder written by save_pretrained with its tokenizer.

    DEVICE is a `--device` value (auto, cpu, cuda, cuda:N); a bad or absent one is a ConfigError naming --device."""
    from transformers import AutoTokenizer

    from moeforge.model.device import resolve_device
    from moeforge.model.load import load_model

    target = resolve_device(device)
    if not Path(source).is_dir():
        raise ArtifactNotFound(
            f"{source}: no such model directory. Pass a folder written by save_pretrained (config.json, weights "
            "and tokenizer), e.g. one built with `moeforge testbed build`."
        )
    model = load_model(source).to(target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{source}: the model loads but its tokenizer does not ({exc}). "
            "Save the tokenizer beside the weights with tokenizer.save_pretrained."
        ) from exc
    return model, tokenizer
