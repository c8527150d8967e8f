"""Bad input to every command and config file: a non-zero exit, one `error:` line naming the culprit, no traceback.

One table of cases, run in-process; a few run as real processes too, to show no traceback reaches a terminal.
Nothing here loads a model: each input is refused before that.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from moeforge.chain.keys import create_wallet
from moeforge.cli.main import app
from tests.model.tiny import tiny_config
from tests.profile.synthetic import random_profile

runner = CliRunner()


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    """Bad (and a few good) inputs, made once: f.NAME is a path as a string."""
    root = tmp_path_factory.mktemp("bad")

    def put(name: str, content: str | bytes | dict | list) -> str:
        path = root / name
        if isinstance(content, (dict, list)):
            content = json.dumps(content)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    profile = random_profile(range(1, 3), 4).model_dump(mode="json")
    good_profile = put("profile.json", profile)
    result = runner.invoke(app, ["select", good_profile, "--out", str(root / "experts.json")])
    assert result.exit_code == 0, result.output
    experts = json.loads((root / "experts.json").read_text())
    (root / "folder").mkdir()
    model = root / "model"  # enough of a checkpoint for the checks that come before loading it
    tiny_config("deepseek_v2").save_pretrained(model)
    bad_weights = root / "bad_weights"
    tiny_config("deepseek_v2").save_pretrained(bad_weights)
    (bad_weights / "model.safetensors").write_bytes(b"\x00\xff" * 64)
    bad_config = root / "bad_config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text(json.dumps({**tiny_config("deepseek_v2").to_dict(), "num_hidden_layers": "x"}))
    create_wallet("w", "default", root / "wallets")
    return SimpleNamespace(
        root=root, missing=str(root / "missing.json"), folder=str(root / "folder"), file=put("file.txt", "hello\n"),
        empty=put("empty.json", ""), binary=put("binary.json", b"\xff\xfe\x00garbage\x81"),
        bad_json=put("bad_json.json", '{\n  "rounds": 3,,\n}'), a_list=put("a_list.json", [1, 2]),
        profile=good_profile, experts=str(root / "experts.json"),
        profile_v2=put("profile_v2.json", {**profile, "version": 2}),
        profile_extra=put("profile_extra.json", {**profile, "colour": "blue"}),
        profile_types=put("profile_types.json", {**profile, "tokens": "many"}),
        profile_range=put("profile_range.json", {**profile, "top_k": -1}),
        profile_no_tokens=put("profile_no_tokens.json", {k: v for k, v in profile.items() if k != "tokens"}),
        experts_extra=put("experts_extra.json", {**experts, "colour": 1}),
        experts_types=put("experts_types.json", {**experts, "p": "high"}),
        experts_range=put("experts_range.json", {**experts, "p": 7}),
        experts_v9=put("experts_v9.json", {**experts, "version": 9}),
        request_extra=put("request_extra.json", {"rounds": 2, "roundz": 3}),
        request_types=put("request_types.json", {"train": {"lr": "fast"}}),
        request_range=put("request_range.json", {"heldout": 2}),
        request_v2=put("request_v2.json", {"version": 2}),
        cfg_no_type=put("cfg_no_type.json", {"hidden_size": 8}), cfg_unknown=put("cfg_unknown.json", {"model_type": "nope"}),
        cfg_types=put("cfg_types.json", {"model_type": "mixtral", "num_hidden_layers": "x"}),
        model=str(model), bad_weights=str(bad_weights), bad_config=str(bad_config), wallets=str(root / "wallets"),
        chain="local://" + str(root / "chain.sqlite"), store=str(root / "store"),
    )


def _owner(f, *more):
    return ["owner", "publish", "--wallet", "w", "--wallet-path", f.wallets, "--model", f.model, "--salt", "s",
            "--chain", f.chain, "--store", f.store, *more]


# (id, argv from the inputs, what the message must contain)
CASES = [
    # select: the routing profile file
    ("profile-missing", lambda f: ["select", f.missing, "--out", f.folder], ["missing.json", "no such routing profile"]),
    ("profile-folder", lambda f: ["select", f.folder, "--out", f.folder], ["folder", "is a folder"]),
    ("profile-empty", lambda f: ["select", f.empty, "--out", f.folder], ["empty.json", "line 1, column 1"]),
    ("profile-binary", lambda f: ["select", f.binary, "--out", f.folder], ["binary.json", "not UTF-8"]),
    ("profile-bad-json", lambda f: ["select", f.bad_json, "--out", f.folder], ["bad_json.json", "line 2, column 15"]),
    ("profile-list", lambda f: ["select", f.a_list, "--out", f.folder], ["a_list.json", "JSON list"]),
    ("profile-version", lambda f: ["select", f.profile_v2, "--out", f.folder], ["profile_v2.json", "version: Input should be 1 (got 2)"]),
    ("profile-unknown-key", lambda f: ["select", f.profile_extra, "--out", f.folder], ["colour", "Extra inputs"]),
    ("profile-wrong-type", lambda f: ["select", f.profile_types, "--out", f.folder], ["tokens: Input should be a valid integer", "(got 'many')"]),
    ("profile-out-of-range", lambda f: ["select", f.profile_range, "--out", f.folder], ["top_k: Input should be greater than or equal to 1 (got -1)"]),
    ("profile-missing-key", lambda f: ["select", f.profile_no_tokens, "--out", f.folder], ["tokens: Field required"]),
    # select: options
    ("select-p-zero", lambda f: ["select", f.profile, "--out", f.folder, "--p", "0"], ["--p 0.0"]),
    ("select-p-nan", lambda f: ["select", f.profile, "--out", f.folder, "--p", "nan"], ["--p nan", "finite"]),
    ("select-min-over-max", lambda f: ["select", f.profile, "--out", f.folder, "--min-per-layer", "3",
                                       "--max-per-layer", "1"], ["--max-per-layer=1", "--min-per-layer=3"]),
    ("select-min-over-experts", lambda f: ["select", f.profile, "--out", f.folder, "--min-per-layer", "9"],
     ["--min-per-layer 9", "only 4 routed experts"]),
    ("select-unknown-score", lambda f: ["select", f.profile, "--out", f.folder, "--score", "vibes"], ["--score"]),
    ("select-out-under-a-file", lambda f: ["select", f.profile, "--out", f.file + "/x.json"], ["--out", "file.txt is a file"]),
    # train and extract: the expert config file
    ("experts-missing", lambda f: ["train", f.model, f.missing, "--out", f.folder], ["missing.json", "moeforge select"]),
    ("experts-binary", lambda f: ["extract", f.model, f.binary, "--out", f.folder], ["binary.json", "not UTF-8"]),
    ("experts-unknown-key", lambda f: ["train", f.model, f.experts_extra, "--out", f.folder], ["experts_extra.json", "colour"]),
    ("experts-wrong-type", lambda f: ["extract", f.model, f.experts_types, "--out", f.folder], ["p: Input should be a valid number", "(got 'high')"]),
    ("experts-out-of-range", lambda f: ["train", f.model, f.experts_range, "--out", f.folder], ["p: Input should be less than or equal to 1 (got 7)"]),
    ("experts-version", lambda f: ["extract", f.model, f.experts_v9, "--out", f.folder], ["experts_v9.json", "version: Input should be 1 (got 9)"]),
    ("train-lr-inf", lambda f: ["train", f.model, f.experts, "--out", f.folder, "--lr", "inf"], ["--lr inf", "finite"]),
    ("train-tokens-zero", lambda f: ["train", f.model, f.experts, "--out", f.folder, "--tokens", "0"], ["--tokens 0"]),
    ("train-out-is-a-file", lambda f: ["train", f.model, f.experts, "--out", f.file], ["--out", "file.txt", "is a file"]),
    ("extract-coverage", lambda f: ["extract", f.model, f.experts, "--out", f.folder, "--coverage", "2"], ["--coverage 2.0"]),
    ("extract-out-is-a-file", lambda f: ["extract", f.model, f.experts, "--out", f.file], ["--out", "is a file"]),
    # eval, profile
    ("eval-out-is-a-folder", lambda f: ["eval", f.model, "--out", f.folder], ["--out", "is a folder"]),
    ("eval-seq-len", lambda f: ["eval", f.model, "--seq-len", "1"], ["--seq-len 1"]),
    ("profile-tokens", lambda f: ["profile", f.model, "math", "--out", f.folder, "--tokens", "-5"], ["--tokens -5"]),
    ("profile-data-missing", lambda f: ["profile", f.model, f.missing, "--out", f.folder], ["missing.json"]),
    # model
    ("inspect-bad-weights", lambda f: ["model", "inspect", f.bad_weights], ["bad_weights", "safetensors"]),
    ("inspect-bad-config", lambda f: ["model", "inspect", f.bad_config], ["bad_config", "num_hidden_layers"]),
    ("size-list", lambda f: ["model", "size", f.a_list], ["a_list.json", "JSON list"]),
    ("size-no-model-type", lambda f: ["model", "size", f.cfg_no_type], ["cfg_no_type.json", "model_type"]),
    ("size-unknown-model-type", lambda f: ["model", "size", f.cfg_unknown], ["'nope'", "deepseek_v2"]),
    ("size-wrong-type", lambda f: ["model", "size", f.cfg_types], ["cfg_types.json", "num_hidden_layers"]),
    ("size-dtype", lambda f: ["model", "size", "mixtral-8x7b", "--dtype", "int3"], ["--dtype 'int3'"]),
    # data
    ("data-binary", lambda f: ["data", "prepare", f.binary, "--salt", "s"], ["binary.json"]),
    ("data-heldout", lambda f: ["data", "prepare", f.file, "--salt", "s", "--heldout", "2"], ["heldout", "2.0"]),
    # owner: --config (a JobRequest) and flags
    ("request-missing", lambda f: _owner(f, "--config", f.missing), ["--config", "missing.json", "no such job request"]),
    ("request-folder", lambda f: _owner(f, "--config", f.folder), ["--config", "is a folder"]),
    ("request-empty", lambda f: _owner(f, "--config", f.empty), ["empty.json", "line 1, column 1"]),
    ("request-binary", lambda f: _owner(f, "--config", f.binary), ["binary.json", "not UTF-8"]),
    ("request-bad-json", lambda f: _owner(f, "--config", f.bad_json), ["bad_json.json", "line 2"]),
    ("request-list", lambda f: _owner(f, "--config", f.a_list), ["a_list.json", "JSON list"]),
    ("request-unknown-key", lambda f: _owner(f, "--config", f.request_extra), ["request_extra.json", "roundz: Extra inputs are not permitted (got 3)"]),
    ("request-wrong-type", lambda f: _owner(f, "--config", f.request_types), ["request_types.json", "train.lr: Input should be a valid number", "(got 'fast')"]),
    ("request-out-of-range", lambda f: _owner(f, "--config", f.request_range), ["request_range.json", "heldout: Input should be less than 1 (got 2)"]),
    ("request-version", lambda f: _owner(f, "--config", f.request_v2), ["request_v2.json", "version: Input should be 1 (got 2)"]),
    ("owner-lr", lambda f: _owner(f, "--lr", "-1"), ["--lr -1.0", "greater than 0"]),
    ("owner-lr-inf", lambda f: _owner(f, "--lr", "inf"), ["--lr inf", "finite"]),
    ("owner-rounds", lambda f: _owner(f, "--rounds", "0"), ["--rounds 0"]),
    ("owner-flag-beats-file", lambda f: _owner(f, "--config", f.request_extra, "--rounds", "0"), ["--rounds 0", "roundz"]),
    ("owner-job-id", lambda f: _owner(f, "--job-id", "bad id!"), ["--job-id 'bad id!'"]),
    ("owner-parts", lambda f: _owner(f, "--parts", "0"), ["--parts 0", "greater than or equal to 1"]),
    ("owner-run-is-a-file", lambda f: _owner(f, "--run", f.file), ["--run", "is a file"]),
    ("owner-wallet", lambda f: [*_owner(f), "--wallet", "ghost"], ["ghost", "no key file"]),
    ("owner-chain-scheme", lambda f: [*_owner(f), "--chain", "http://x"], ["http://x", "local:///"]),
    ("owner-store-scheme", lambda f: [*_owner(f), "--store", "gopher://x"], ["gopher://", "file:///"]),
    ("owner-metrics-port", lambda f: [*_owner(f)[:1], "run", *_owner(f)[2:], "--metrics-port", "70000"], ["--metrics-port"]),
    # miner, validator, network
    ("miner-mode", lambda f: ["miner", "run", "--wallet", "w", "--owner", "x", "--mode", "turbo"], ["--mode 'turbo'"]),
    ("miner-optimizer", lambda f: ["miner", "run", "--wallet", "w", "--owner", "x", "--optimizer", "sgd"], ["--optimizer 'sgd'"]),
    ("miner-loss-chunk", lambda f: ["miner", "run", "--wallet", "w", "--owner", "x", "--loss-chunk", "-1"], ["--loss-chunk"]),
    ("miner-run-is-a-file", lambda f: ["miner", "run", "--wallet", "w", "--owner", "x", "--run", f.file], ["--run"]),
    ("miner-timeout", lambda f: ["miner", "run", "--wallet", "w", "--owner", "x", "--job-timeout", "0"], ["--job-timeout"]),
    ("validator-salt", lambda f: ["validator", "run", "--wallet", "w", "--owner", "x"], ["--salt"]),
    ("validator-data", lambda f: ["validator", "run", "--wallet", "w", "--owner", "x", "--salt", "s", "--data", f.missing],
     ["--data", "missing.json"]),
    ("network-modes", lambda f: ["network", "up", "--modes", "turbo"], ["--modes 'turbo'"]),
    ("network-miners", lambda f: ["network", "up", "--miners", "0"], ["--miners"]),
    ("network-config", lambda f: ["network", "up", "--model", f.model, "--config", f.request_extra], ["roundz"]),
    ("network-run-is-a-file", lambda f: ["network", "up", "--model", f.model, "--run", f.file], ["--run", "is a file"]),
    ("testbed-out-is-a-file", lambda f: ["testbed", "build", "--out", f.file], ["--out", "is a file"]),
    ("testbed-preset", lambda f: ["testbed", "build", "--preset", "huge"], ["'huge'", "small"]),
    ("demo-eval-tokens", lambda f: ["demo", "--eval-tokens", "0"], ["--eval-tokens"]),
    # chain and store
    ("chain-scheme", lambda f: ["chain", "block", "--chain", "ftp://x"], ["ftp://x"]),
    ("chain-relative", lambda f: ["chain", "init", "--chain", "local://rel.sqlite"], ["absolute path"]),
    ("chain-option", lambda f: ["chain", "init", "--chain", f.chain + "?colour=1"], ["colour"]),
    ("chain-step-huge", lambda f: ["chain", "step", "99999999999999999999", "--chain", f.chain], ["blocks"]),
    ("chain-at-block", lambda f: ["chain", "commitments", "--at-block", "-1", "--chain", f.chain], ["--at-block"]),
    ("chain-stake-nan", lambda f: ["chain", "stake", "w", "nan", "--path", f.wallets, "--chain", f.chain], ["nan"]),
    ("wallet-slash", lambda f: ["chain", "wallet", "create", "a/b", "--path", f.wallets], ["NAME 'a/b'"]),
    ("wallet-empty-hotkey", lambda f: ["chain", "wallet", "create", "x", "--hotkey", "", "--path", f.wallets], ["--hotkey ''"]),
    ("wallet-path-is-a-file", lambda f: ["chain", "wallet", "create", "x", "--path", f.file], ["--path", "is a file"]),
    ("register-nobody", lambda f: ["chain", "register", "nobody", "--path", f.wallets, "--chain", f.chain], ["'nobody'"]),
    ("commit-hex", lambda f: ["chain", "commit", "w", "zz", "--hex", "--path", f.wallets, "--chain", f.chain], ["'zz'"]),
    ("store-is-a-file", lambda f: ["store", "ls", "--store", f.file], ["file.txt", "is a file"]),
    ("store-scheme", lambda f: ["store", "put", f.file, "--store", "gopher://x"], ["gopher://"]),
    ("store-put-folder", lambda f: ["store", "put", f.folder, "--store", f.store], ["folder"]),
    ("store-digest", lambda f: ["store", "get", "abc", "--store", f.store], ["'abc'"]),
    ("store-get-out-folder", lambda f: ["store", "get", "0" * 64, "--out", f.folder, "--store", f.store],
     ["--out", "is a folder"]),
]


@pytest.mark.parametrize(("argv", "culprits"), [pytest.param(argv, culprits, id=name) for name, argv, culprits in CASES])
def test_bad_input_is_one_error_naming_the_culprit_without_a_traceback(f, argv, culprits):
    result = runner.invoke(app, argv(f), env={"MOEFORGE_HOME": str(f.root / "home"), "MOEFORGE_DATA_SALT": "",
                                              "COLUMNS": "200"})
    assert not result.exception or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 1:  # ours: one red line
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.output
        shown = errors[0]
    else:  # typer's own usage error names the parameter
        shown = result.output
    for culprit in culprits:
        assert culprit in shown, (culprit, shown)


SUBPROCESS_CASES = [
    (["select", "{binary}", "--out", "{folder}"], "binary.json"),
    (["owner", "publish", "--wallet", "w", "--model", "{model}", "--salt", "s", "--config", "{request_extra}"], "roundz"),
    (["model", "inspect", "{bad_weights}"], "safetensors"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "culprit"), SUBPROCESS_CASES, ids=["profile", "request", "weights"])
def test_a_real_terminal_sees_one_error_line_and_exit_1(f, argv, culprit):
    env = {**os.environ, "MOEFORGE_HOME": str(f.root / "home"), "COLUMNS": "300"}
    args = [arg.format(**vars(f)) for arg in argv]
    proc = subprocess.run([sys.executable, "-m", "moeforge", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=Path(__file__).parents[2])
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and culprit in errors[0], proc.stderr
