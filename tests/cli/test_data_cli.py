"""Tests for moeforge/cli/data.py: `moeforge data prepare` on good and bad input."""

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from typer.testing import CliRunner

from moeforge.cli.data import app
from moeforge.data.fingerprint import fingerprint_records
from moeforge.data.formatting import encode_records
from moeforge.data.packing import pack_examples
from moeforge.data.readers import DataSpec, read_records
from moeforge.data.splits import split_records
from moeforge.errors import ConfigError, DataError

SALT = "test-salt-not-secret"
ROWS = [{"question": f"What is {n} + {n}?", "answer": f" {2 * n}"} for n in range(60)]
FIELDS = ["--prompt-field", "question", "--response-field", "answer"]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "job.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A tiny byte-level BPE tokenizer saved as save_pretrained writes it."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([f"{row['question']}{row['answer']}" for row in ROWS], trainer)
    folder = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>").save_pretrained(folder)
    return folder


def invoke(*args, env=None):
    return CliRunner().invoke(app, ["prepare", *map(str, args)], env=env)


def job_splits(path):
    """The reference: the library functions the command wires together, called directly."""
    records = read_records(path, DataSpec(prompt_field="question", response_field="answer")).records
    return records, split_records(records, SALT)


def test_prepare_reports_counts_and_fingerprint(data_file):
    result = invoke(data_file, *FIELDS, "--salt", SALT)
    assert result.exit_code == 0, result.output
    records, splits = job_splits(data_file)
    for name in ("train", "validation", "heldout"):
        assert f"{name} " in result.output
        assert f"{len(getattr(splits, name)):,} records" in result.output
    assert f"fingerprint {fingerprint_records(records)}" in result.output


def test_prepare_takes_the_salt_from_the_environment(data_file):
    result = invoke(data_file, *FIELDS, env={"MOEFORGE_DATA_SALT": SALT})
    assert result.exit_code == 0, result.output
    _, splits = job_splits(data_file)
    assert f"{len(splits.train):,} records" in result.output


def test_prepare_with_tokenizer_counts_tokens_and_rows(data_file, tokenizer_dir):
    from transformers import AutoTokenizer

    result = invoke(data_file, *FIELDS, "--salt", SALT, "--tokenizer", tokenizer_dir, "--seq-len", 32)
    assert result.exit_code == 0, result.output
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    _, splits = job_splits(data_file)
    packed = pack_examples(encode_records(splits.train, tokenizer), 32, tokenizer.pad_token_id)
    rows = packed.input_ids.shape[0]
    assert f"{packed.n_tokens:,} tokens ({packed.n_loss_tokens:,} with loss), {rows:,} rows of 32" in result.output


def test_prepare_skip_bad_lists_skipped_records(data_file):
    lines = data_file.read_text(encoding="utf-8").split("\n")
    lines.insert(2, "{not json")
    data_file.write_text("\n".join(lines), encoding="utf-8")
    result = invoke(data_file, *FIELDS, "--salt", SALT, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert f"skipped {data_file}:3: not valid JSON" in result.output


def test_prepare_bad_record_fails_naming_the_file_and_line(data_file):
    lines = data_file.read_text(encoding="utf-8").split("\n")
    lines.insert(2, "{not json")
    data_file.write_text("\n".join(lines), encoding="utf-8")
    result = invoke(data_file, *FIELDS, "--salt", SALT)
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError)  # the root group prints it as one red line
    assert str(result.exception).startswith(f"{data_file}:3: not valid JSON")


def test_prepare_missing_file_names_it(tmp_path):
    missing = tmp_path / "missing.jsonl"
    result = invoke(missing, "--salt", SALT)
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError) and str(missing) in str(result.exception)


def test_prepare_without_salt_remembers_one_for_the_file_and_splits_the_same_next_time(data_file, monkeypatch, tmp_path):
    monkeypatch.delenv("MOEFORGE_DATA_SALT", raising=False)
    monkeypatch.setenv("MOEFORGE_HOME", str(tmp_path / "home"))
    first = invoke(data_file, *FIELDS)
    assert first.exit_code == 0, first.output
    assert "new, remembered in" in first.output
    (remembered,) = (tmp_path / "home" / "splits").iterdir()
    assert remembered.stat().st_mode & 0o077 == 0  # the salt re-derives the held-out split: the user's alone
    again = invoke(data_file, *FIELDS)
    assert f"remembered in {remembered}" in " ".join(again.output.split())
    counts = lambda out: [line for line in out.splitlines() if "records" in line and ("train" in line or "heldout" in line)]
    assert counts(first.output) == counts(again.output)


def test_prepare_prompt_field_alone_is_a_config_error(data_file):
    result = invoke(data_file, "--prompt-field", "question", "--salt", SALT)
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError) and "--response-field" in str(result.exception)


def test_prepare_unknown_format_is_one_red_line_and_exit_1_like_every_error(data_file):
    from moeforge.cli.main import app as root

    result = CliRunner().invoke(root, ["data", "prepare", str(data_file), "--format", "xml", "--salt", SALT])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "xml" in lines[0] and "moeforge data prepare --help" in lines[0]


def test_prepare_checks_split_fractions_before_reading(tmp_path):
    result = invoke(tmp_path / "missing.jsonl", "--salt", SALT, "--validation", "0.6", "--heldout", "0.5")
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError) and "below 1" in str(result.exception)
