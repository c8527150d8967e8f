"""Bad input to the network role commands: exit 1, one `error:` line naming the culprit, no traceback."""

import json

import pytest
from typer.testing import CliRunner

from moeforge.chain.keys import create_wallet
from moeforge.chain.local import LocalChain
from moeforge.cli.main import app

runner = CliRunner()


@pytest.fixture
def wallets(tmp_path):
    create_wallet("someone", "default", tmp_path / "wallets")
    return tmp_path / "wallets"


@pytest.fixture
def chain_url(tmp_path):
    LocalChain(tmp_path / "chain.sqlite", block_seconds=0)
    return f"local://{tmp_path / 'chain.sqlite'}"


def _refused(args: list[str], *needles: str, env: dict | None = None) -> None:
    result = runner.invoke(app, args, env={"MOEFORGE_DATA_SALT": "", **(env or {})})
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "Traceback" not in result.output


def test_owner_without_a_salt_is_refused(tmp_path, small_testbed):
    _refused(["owner", "publish", "--wallet", "someone", "--model", str(small_testbed[1])], "no held-out salt", "--salt")


def test_owner_with_a_missing_model_folder_is_refused(tmp_path):
    _refused(["owner", "run", "--wallet", "someone", "--model", str(tmp_path / "nowhere"), "--salt", "s"],
             "--model", "nowhere", "not a checkpoint folder")


def test_owner_with_a_bad_round_count_names_the_flag(tmp_path, small_testbed, wallets):
    _refused(["owner", "publish", "--wallet", "someone", "--wallet-path", str(wallets), "--model", str(small_testbed[1]),
              "--salt", "s", "--rounds", "0"], "--rounds 0")


def test_owner_with_a_config_that_is_not_json_is_refused(tmp_path, small_testbed):
    bad = tmp_path / "request.json"
    bad.write_text("rounds: 3")
    _refused(["owner", "publish", "--wallet", "someone", "--model", str(small_testbed[1]), "--salt", "s",
              "--config", str(bad)], "--config", "not a JSON job request")


def test_owner_with_a_config_field_that_does_not_exist_names_it(tmp_path, small_testbed):
    bad = tmp_path / "request.json"
    bad.write_text(json.dumps({"roundz": 3}))
    _refused(["owner", "publish", "--wallet", "someone", "--model", str(small_testbed[1]), "--salt", "s",
              "--config", str(bad)], "roundz")


def test_owner_with_a_missing_wallet_names_the_key_file(tmp_path, small_testbed):
    _refused(["owner", "publish", "--wallet", "ghost", "--wallet-path", str(tmp_path / "w"), "--model",
              str(small_testbed[1]), "--salt", "s"], "ghost", "no key file")


def test_miner_with_an_unknown_mode_is_refused(tmp_path):
    _refused(["miner", "run", "--wallet", "someone", "--owner", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
              "--mode", "turbo"], "--mode 'turbo'", "full, quantized, subset")


def test_miner_waiting_for_an_unregistered_owner_is_told_so(tmp_path, wallets, chain_url):
    owner = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
    _refused(["miner", "run", "--wallet", "someone", "--wallet-path", str(wallets), "--owner", owner, "--chain", chain_url,
              "--store", str(tmp_path / "store")], owner, "not registered")


def test_validator_without_a_salt_is_refused(tmp_path):
    _refused(["validator", "run", "--wallet", "someone", "--owner", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"],
             "no held-out salt")


def test_validator_with_a_missing_data_file_names_it(tmp_path):
    _refused(["validator", "run", "--wallet", "someone", "--owner", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
              "--salt", "s", "--data", str(tmp_path / "missing.jsonl")], "--data", "missing.jsonl")


def test_network_up_with_an_unknown_miner_mode_is_refused(tmp_path, small_testbed):
    _refused(["network", "up", "--model", str(small_testbed[1]), "--modes", "full,turbo", "--run", str(tmp_path / "r")],
             "--modes", "turbo")
    assert not (tmp_path / "r").exists()


def test_network_up_with_a_missing_model_is_refused_before_starting_anything(tmp_path):
    _refused(["network", "up", "--model", str(tmp_path / "nowhere"), "--run", str(tmp_path / "r")], "--model", "nowhere")
    assert not (tmp_path / "r").exists()


def test_network_up_on_a_chain_it_cannot_administer_is_refused(tmp_path, small_testbed):
    _refused(["network", "up", "--model", str(small_testbed[1]), "--chain", "bittensor://finney", "--run", str(tmp_path / "r")],
             "netuid")


def _run_folders(home, names):
    import os

    for i, name in enumerate(names):
        run = home / "network" / name
        run.mkdir(parents=True)
        (run / "network.json").write_text("{}")
        os.utime(run / "network.json", (1_000_000 + i, 1_000_000 + i))  # oldest first
    (home / "network" / "notes").mkdir()  # not a run folder: never touched


def test_network_clean_removes_all_but_the_newest_run_folders_and_nothing_else(tmp_path):
    home = tmp_path / "home"
    _run_folders(home, ["20260101-000000", "20260102-000000", "20260103-000000"])
    result = runner.invoke(app, ["network", "clean", "--keep", "1"], env={"MOEFORGE_HOME": str(home)})
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (home / "network").iterdir()) == ["20260103-000000", "notes"]
    assert "removed 2 run folders" in result.output
    result = runner.invoke(app, ["network", "clean"], env={"MOEFORGE_HOME": str(home)})
    assert sorted(p.name for p in (home / "network").iterdir()) == ["notes"]


def test_network_clean_with_a_negative_keep_is_refused(tmp_path):
    _refused(["network", "clean", "--keep", "-1"], "--keep -1", env={"MOEFORGE_HOME": str(tmp_path)})
