"""`moeforge library …` and `moeforge train --warm-start` on the small testbed, through the root app: a local train
output deposited with its reports, browsed, matched, warm-started from, combined, retired and verified; bad input
is one clear line and exit 1."""

import json
import re

import pytest
from typer.testing import CliRunner

from moeforge.cli.main import app

pytestmark = pytest.mark.slow

runner = CliRunner()
SEQ = ("--seq-len", "64")


def entry_in(output: str, after: str = "entry ") -> str:
    return re.search(re.escape(after) + r"([0-9a-f]{64})", output).group(1)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def _train(model_dir, tmp, domain: str, *extra) -> tuple:
    """profile, select, train 40k tokens, eval: (train --out folder, profile path)."""
    for args in (("profile", model_dir, domain, "--out", tmp / f"prof-{domain}", "--tokens", 8192, *SEQ),
                 ("select", tmp / f"prof-{domain}" / "profile.json", "--out", f"{tmp}/sel-{domain}/"),
                 ("train", model_dir, tmp / f"sel-{domain}" / "expert_config.json", "--out", tmp / f"tr-{domain}", "--data", domain,
                  "--tokens", 40_000, "--lr", "1e-2", "--batch-size", 8, *SEQ, *extra),
                 ("eval", model_dir, "--delta", tmp / f"tr-{domain}" / "delta", "--data", domain, "--max-tokens", 4096, *SEQ,
                  "--gsm8k-limit", 0, "--out", tmp / f"tr-{domain}" / "report.json")):
        result = invoke(*args)
        assert result.exit_code == 0, (args[0], result.output)
    return tmp / f"tr-{domain}", tmp / f"prof-{domain}" / "profile.json"


@pytest.fixture(scope="module")
def deposited(small_testbed, tmp_path_factory):
    """A library (in this module's own folder) holding a maths and a medical entry trained through the CLI."""
    import os

    _, model_dir = small_testbed
    tmp = tmp_path_factory.mktemp("library-cli")
    env = {"MOEFORGE_CATALOG": f"sqlite:///{tmp}/catalog.sqlite", "MOEFORGE_LIBRARY_STORE": str(tmp / "store")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    base = invoke("eval", model_dir, "--data", "math", "--max-tokens", 4096, *SEQ, "--gsm8k-limit", 0, "--out", tmp / "base.json")
    assert base.exit_code == 0, base.output
    ids = {}
    for domain in ("math", "medical"):
        folder, profile = _train(model_dir, tmp, domain, "--warm-start", "none")
        result = invoke("library", "add", folder, "--model", model_dir, "--domain", domain, "--report", folder / "report.json",
                        "--profile", profile, "--owner", "acme", *(("--base-report", tmp / "base.json") if domain == "math" else ()))
        assert result.exit_code == 0, result.output
        ids[domain] = entry_in(result.output)
    yield model_dir, tmp, ids, env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def lib_env(deposited, monkeypatch):
    for k, v in deposited[3].items():
        monkeypatch.setenv(k, v)
    return deposited


def test_add_is_idempotent_and_ls_show_search_card_describe_the_entry(lib_env, tmp_path):
    model_dir, tmp, ids, _ = lib_env
    again = invoke("library", "add", tmp / "tr-math", "--model", model_dir, "--domain", "math", "--report",
                   tmp / "tr-math" / "report.json", "--profile", tmp / "prof-math" / "profile.json", "--owner", "acme",
                   "--base-report", tmp / "base.json")
    assert again.exit_code == 0 and f"already in the library: entry {ids['math']}" in again.output
    listed = invoke("library", "ls")
    assert listed.exit_code == 0 and ids["math"][:12] in listed.output and ids["medical"][:12] in listed.output
    found = invoke("library", "search", "medi")
    assert ids["medical"][:12] in found.output and ids["math"][:12] not in found.output
    shown = invoke("library", "show", ids["math"][:8], "--heatmap", tmp_path / "routing.png")
    assert shown.exit_code == 0, shown.output
    assert "held-out math loss" in shown.output and "acme" in shown.output and "routing of math" in shown.output
    assert (tmp_path / "routing.png").stat().st_size > 0
    report = json.loads((tmp / "tr-math" / "report.json").read_text())
    assert f"{report['domain_loss']:.4f}" in shown.output
    card = invoke("library", "card", ids["math"][:8], "--out", tmp_path / "README.md")
    assert card.exit_code == 0
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("---\nbase_model: ") and "base_model_relation: finetune" in text and "model-index" in text


def test_match_ranks_the_maths_entry_first_for_maths_data_and_writes_why(lib_env, tmp_path):
    model_dir, _, ids, _ = lib_env
    result = invoke("library", "match", "math", "--model", model_dir, "--tokens", 8192, "--out", tmp_path / "match.json")
    assert result.exit_code == 0, result.output
    ranking = json.loads((tmp_path / "match.json").read_text())
    assert ranking["ranking"][0]["entry"] == ids["math"] and ranking["warm_start"] == ids["math"]
    assert "routing similarity" in ranking["ranking"][0]["why"] and ranking["ranking"][0]["loss_gain"] > 0


def test_train_warm_starts_from_the_match_and_add_records_the_lineage(lib_env, tmp_path):
    model_dir, _, ids, _ = lib_env
    folder, profile = _train(model_dir, tmp_path, "math")  # --warm-start auto (the default)
    lineage = json.loads((folder / "warm_start.json").read_text())["warm_start"]
    assert [w["entry"] for w in lineage] == [ids["math"]]
    result = invoke("library", "add", folder, "--model", model_dir, "--domain", "math", "--profile", profile)
    assert result.exit_code == 0, result.output
    child = entry_in(result.output)
    tree = invoke("library", "lineage", child[:8])
    assert tree.exit_code == 0 and f"warm start ({lineage[0]['slots']} experts) from {ids['math'][:12]}" in tree.output
    parent = invoke("library", "lineage", ids["math"][:8])
    assert child[:12] in parent.output  # "built on it"


def test_combine_writes_a_slice_checks_each_domain_and_deposits_with_both_parents(lib_env, tmp_path):
    model_dir, _, ids, _ = lib_env
    result = invoke("library", "combine", ids["math"][:8], ids["medical"][:8], "--model", model_dir, "--out", tmp_path / "both",
                    "--check-tokens", 2048)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "both" / "manifest.json").is_file()
    assert "math" in result.output and "medical" in result.output
    entry = entry_in(result.output, "as entry ")
    tree = invoke("library", "lineage", entry[:8])
    assert ids["math"][:12] in tree.output and ids["medical"][:12] in tree.output and "merge" in tree.output


def test_retire_hides_an_entry_from_ls_and_its_card_says_why(lib_env, tmp_path):
    model_dir, tmp, ids, env = lib_env
    assert invoke("library", "verify").exit_code == 0
    retired = invoke("library", "retire", ids["medical"][:8], "--reason", "superseded by a better run")
    assert retired.exit_code == 0
    assert ids["medical"][:12] not in invoke("library", "ls").output
    assert ids["medical"][:12] in invoke("library", "ls", "--all").output
    assert "superseded by a better run" in invoke("library", "card", ids["medical"][:8]).output


def test_bad_input_is_one_clear_line_and_exit_1(lib_env, tmp_path):
    model_dir, tmp, ids, _ = lib_env
    cases = [
        (("library", "show", "0123456789"), "no library entry '0123456789'"),
        (("library", "show", "zz"), "is not an entry id"),
        (("library", "ls", "--catalog", "mysql://x/y"), "unknown scheme"),
        (("library", "ls", "--catalog", "postgresql://u:pw@127.0.0.1:1/db"), "cannot reach the catalog"),
        (("library", "add", tmp_path, "--model", model_dir, "--domain", "x"), "no delta/ folder"),
        (("library", "add", tmp / "tr-math", "--model", model_dir, "--domain", "x", "--license", "WTFPL-9"), "--license"),
        (("library", "retire", ids["math"][:8], "--reason", " "), "--reason is empty"),
        (("library", "combine", ids["math"][:8], "--model", model_dir, "--out", tmp_path / "c"), "at least two entries"),
        (("train", model_dir, tmp / "sel-math" / "expert_config.json", "--out", tmp_path / "t", "--warm-start", "nope", *SEQ),
         "--warm-start 'nope'"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_verify_exits_1_naming_a_corrupt_entry(small_testbed, tmp_path, monkeypatch):
    """On a library of its own: corrupting a blob must not disturb the module's shared one."""
    _, model_dir = small_testbed
    monkeypatch.setenv("MOEFORGE_CATALOG", f"sqlite:///{tmp_path}/catalog.sqlite")
    monkeypatch.setenv("MOEFORGE_LIBRARY_STORE", str(tmp_path / "store"))
    folder, profile = _train(model_dir, tmp_path, "python", "--warm-start", "none")
    added = invoke("library", "add", folder, "--model", model_dir, "--domain", "python", "--profile", profile)
    entry = entry_in(added.output)
    for blob in (tmp_path / "store").rglob("*"):
        if blob.is_file() and blob.stat().st_size > 10_000:  # the expert tensors
            blob.write_bytes(b"\0" * blob.stat().st_size)
    result = invoke("library", "verify")
    assert result.exit_code == 1 and f"BAD {entry[:12]}" in result.output and "corrupt" in result.output
    assert invoke("library", "show", entry[:8]).exit_code == 0  # the manifest is intact, so the row still shows
    served = invoke("library", "combine", entry[:8], entry[:8], "--model", model_dir, "--out", tmp_path / "x")
    assert served.exit_code == 1 and "corrupt" in served.output
