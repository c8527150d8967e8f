"""Tests for moeforge/data/corpora.py and the vendored files it reads."""

import gzip
import json
import re
from importlib import resources
from pathlib import Path

import pytest

from moeforge.data.corpora import DOMAINS, load_corpus
from moeforge.errors import ConfigError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared beside the repo, where present
VENDORED = resources.files("moeforge.data").joinpath("corpora")
FILES = [
    "wikitext-2/valid.txt", "wikitext-2/test.txt", "python-code/stdlib.jsonl", "mts-dialog/train.csv",
    "mts-dialog/validation.csv", "mts-dialog/test.csv", "gsm8k/train.jsonl", "gsm8k/test.jsonl",
]


def vendored_text(relative):
    return gzip.decompress(VENDORED.joinpath(f"{relative}.gz").read_bytes()).decode("utf-8")


@pytest.mark.parametrize("name", DOMAINS)
def test_train_and_test_are_non_empty_and_disjoint(name):
    train, test = load_corpus(name, "train"), load_corpus(name, "test")
    assert train and test
    assert all(r.response.strip() for r in (*train, *test))
    assert not {r.canonical_bytes() for r in train} & {r.canonical_bytes() for r in test}


def test_corpora_are_parsed_once():
    assert load_corpus("math", "test") is load_corpus("math", "test")


def test_wikitext_has_one_record_per_article():
    for split, relative in (("train", "wikitext-2/valid.txt"), ("test", "wikitext-2/test.txt")):
        lines = vendored_text(relative).split("\n")
        # a title line is " = Title = "; sections are " = = Section = = "; some text lines start with " = "
        titles = [line for line in lines if line[:3] == " = " and line[-3:] == " = " and line[:5] != " = = "]
        records = load_corpus("wikitext", split)
        assert [r.text.split("\n", 1)[0] for r in records] == titles
        assert all(r.prompt == "" for r in records)
        # nothing lost: the articles put back together are the file after its blank preamble
        assert "\n".join(r.text for r in records) == "\n".join(lines[lines.index(titles[0]) :])


def test_python_modules_split_about_15_percent_to_test():
    modules = [json.loads(line) for line in vendored_text("python-code/stdlib.jsonl").split("\n") if line]
    train, test = load_corpus("python", "train"), load_corpus("python", "test")
    assert sorted(r.source for r in (*train, *test)) == sorted(m["path"] for m in modules)
    assert 0.10 <= len(test) / len(modules) <= 0.20
    by_path = {m["path"]: m["text"] for m in modules}
    assert all(r.prompt == "" and r.response == by_path[r.source] for r in (*train, *test))


def test_medical_records_pair_dialogue_with_note_section():
    train, test = load_corpus("medical", "train"), load_corpus("medical", "test")
    header = "Doctor-patient dialogue:\n"
    note = re.compile(r"\n\nClinical note \([A-Za-z_/ ]+\):\n$")
    for record in (*train, *test):
        assert record.prompt.startswith(header) and note.search(record.prompt)
        assert "\r" not in record.text
    sources = {r.source.split(":")[0] for r in train}
    assert sources == {"mts-dialog/train.csv", "mts-dialog/validation.csv"}
    assert {r.source.split(":")[0] for r in test} == {"mts-dialog/test.csv"}


def test_math_records_keep_the_final_answer_line():
    for split in ("train", "test"):
        lines = [line for line in vendored_text(f"gsm8k/{split}.jsonl").split("\n") if line]
        records = load_corpus("math", split)
        assert len(records) == len(lines)
        for record, line in zip(records, lines, strict=True):
            item = json.loads(line)
            assert record.prompt == f"Question: {item['question']}\nAnswer:"
            assert record.response == f" {item['answer']}"
            assert re.search(r"\n#### \S+$", record.response)


def test_unknown_corpus_or_split_lists_the_valid_names():
    with pytest.raises(ConfigError, match=", ".join(DOMAINS)):
        load_corpus("law", "train")
    with pytest.raises(ConfigError, match="train, test"):
        load_corpus("math", "validation")


@pytest.mark.parametrize("relative", FILES)
def test_vendored_files_are_deterministic_gzip_with_license_beside(relative):
    blob = VENDORED.joinpath(f"{relative}.gz").read_bytes()
    assert blob[:2] == b"\x1f\x8b" and blob[4:8] == b"\0\0\0\0"  # gzip magic, mtime 0
    folder = VENDORED.joinpath(relative.split("/")[0])
    assert any(folder.joinpath(name).is_file() for name in ("LICENSE", "LICENSE.md"))


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared data folder is not on this machine")
@pytest.mark.parametrize("relative", FILES)
def test_vendored_files_are_unchanged_copies(relative):
    assert gzip.decompress(VENDORED.joinpath(f"{relative}.gz").read_bytes()) == (SHARED / relative).read_bytes()
