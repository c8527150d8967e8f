"""A newcomer's walk with their own JSONL file and nothing but the README and --help:
data prepare → profile → select → train → eval (with the trained delta) → eval (the base, for comparison).

One salted split holds across the commands (profile and train see the train split, eval the held-out one,
the salt remembered for the file), the fields are detected, and a second `train` into the same --out is
refused unless --resume or --no-resume says what to do.
"""

import json
import random
import re

import pytest
from typer.testing import CliRunner

from moeforge.cli.main import app
from moeforge.data.salts import SPLIT_FILE, SplitNote
from moeforge.eval.report import EvalReport

runner = CliRunner()


@pytest.fixture
def walk(tmp_path, monkeypatch, small_testbed):
    monkeypatch.setenv("MOEFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MOEFORGE_DATA_SALT", raising=False)
    rng = random.Random(0)
    rows = []
    for _ in range(400):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append({"question": f"What is {a} plus {b}?", "answer": f"{a} plus {b} is {a + b}. #### {a + b}"})
    data = tmp_path / "my maths.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return tmp_path, data, small_testbed[1]


def run(*argv: str) -> str:
    result = runner.invoke(app, [str(a) for a in argv])
    assert result.exit_code == 0, f"moeforge {' '.join(map(str, argv))}:\n{result.output}"
    return " ".join(result.output.split())  # rich wraps long lines; compare words


@pytest.mark.slow
def test_data_profile_select_train_eval_on_the_users_own_file(walk):
    tmp, data, base = walk
    prepared = run("data", "prepare", data)
    assert "question → prompt, answer → response (detected)" in prepared
    heldout = int(re.search(r"heldout │ (\d+) records", prepared).group(1))

    profiled = run("profile", base, data, "--out", tmp / "prof", "--tokens", 8192)
    assert "the train split" in profiled and f"heldout {heldout}" in profiled and "remembered in" in profiled

    run("select", tmp / "prof" / "profile.json", "--out", f"{tmp}/sel/")  # a folder, as the trailing slash says
    experts = tmp / "sel" / "expert_config.json"
    assert experts.is_file()

    trained = run("train", base, experts, "--data", data, "--out", tmp / "run", "--tokens", 40_000, "--seq-len", 64,
                  "--lr", "3e-3")
    note = SplitNote.model_validate_json((tmp / "run" / SPLIT_FILE).read_text())
    assert note.split == "train" and note.counts["heldout"] == heldout and note.records == note.counts["train"]
    bar_loss = re.findall(r"loss (\d+\.\d+) ·", trained)[-1]  # the bar's last figure
    assert f"final loss {bar_loss}" in trained  # one final loss: the bar's and the summary's agree

    again = runner.invoke(app, ["train", str(base), str(experts), "--data", str(data), "--out", str(tmp / "run")])
    assert again.exit_code == 1 and "--resume" in again.output and "--no-resume" in again.output

    evaluated = run("eval", base, "--delta", tmp / "run" / "delta", "--data", data, "--seq-len", 64, "--out", tmp / "tuned.json")
    assert "the heldout split" in evaluated and "Loading weights" not in evaluated  # our display only, not HF's bars
    run("eval", base, "--data", data, "--seq-len", 64, "--out", tmp / "base.json")
    tuned, plain = (EvalReport.model_validate_json((tmp / name).read_text()) for name in ("tuned.json", "base.json"))
    assert tuned.split == plain.split == "heldout" and tuned.records == plain.records == heldout
    assert tuned.data_fingerprint == plain.data_fingerprint
    assert tuned.model != plain.model and tuned.model_fingerprint != plain.model_fingerprint
    assert tuned.domain_loss < plain.domain_loss  # trained on the train split, better on the held-out one


def test_eval_with_a_folder_that_is_not_a_delta_names_it(walk):
    tmp, data, base = walk
    result = runner.invoke(app, ["eval", str(base), "--delta", str(tmp), "--data", str(data)])
    assert result.exit_code == 1 and f"--delta {tmp}: not a delta folder" in " ".join(result.output.split())
