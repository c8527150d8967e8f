"""What several commands read the same way: option groups, job data, a checkpoint with its tokenizer.

Each turns a user's mistake into one ConfigError/DataError/ArtifactNotFound that names the flag,
file or folder, so every command reports bad input alike.
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from moeforge.data.corpora import DOMAINS
from moeforge.errors import ArtifactNotFound, ConfigError


def validated(model_class: type[BaseModel], **fields):
    """`model_class(**fields)`, or one ConfigError naming every bad flag (`seq_len` → `--seq-len`)."""
    try:
        return model_class(**fields)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["loc"]:
                name = str(error["loc"][0])
                problems.append(f"--{name.replace('_', '-')} {fields.get(name)!r}: {message}")
            else:
                problems.append(message)
        raise ConfigError(f"bad option: {'; '.join(problems)}.") from None


def job_records(
    data: str,
    split: Literal["train", "test"],
    *,
    flag: str = "--data",
    prompt_field: str | None = None,
    response_field: str | None = None,
    text_field: str | None = None,
):
    """A data file read with the field flags, or a vendored corpus's `split` when `data` names one."""
    from moeforge.data.corpora import load_corpus
    from moeforge.data.readers import DataSpec, read_records

    fields = {"prompt_field": prompt_field, "response_field": response_field, "text_field": text_field}
    given = {name: value for name, value in fields.items() if value is not None}
    path = Path(data)
    if not path.exists() and data in DOMAINS:
        if given:
            named = ", ".join(f"--{name.replace('_', '-')}" for name in given)
            raise ConfigError(
                f"{named} apply to data files, but {data!r} is a vendored corpus with its own fields. "
                "Drop the flags, or pass a data file."
            )
        return load_corpus(data, split)
    if not path.exists():
        raise ConfigError(
            f"{flag} {data!r}: neither a vendored corpus ({', '.join(DOMAINS)}) nor an existing data file or folder. "
            f"Check the path (relative paths start at {Path.cwd()})."
        )
    if text_field is None and prompt_field is None:
        given["text_field"] = "text"
    return read_records(path, validated(DataSpec, **given)).records


def load_checkpoint(source: str | Path):
    """(model, tokenizer) of a checkpoint folder written by save_pretrained with its tokenizer."""
    from transformers import AutoTokenizer

    from moeforge.model.load import load_model

    if not Path(source).is_dir():
        raise ArtifactNotFound(
            f"{source}: no such model directory. Pass a folder written by save_pretrained (config.json, weights "
            "and tokenizer), e.g. one built with `moeforge testbed build`."
        )
    model = load_model(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{source}: the model loads but its tokenizer does not ({exc}). "
            "Save the tokenizer beside the weights with tokenizer.save_pretrained."
        ) from exc
    return model, tokenizer
