"""Tests for moeforge/cli/chain.py: `moeforge chain …` on a local chain, through the root app."""

import pytest
from typer.testing import CliRunner

from moeforge.chain.keys import keypair_from_uri, load_wallet
from moeforge.chain.local import LocalChain
from moeforge.cli.main import app

runner = CliRunner()
BOB = keypair_from_uri("//Bob").ss58_address


@pytest.fixture
def env(tmp_path):
    """(chain URL, wallets folder), with the chain created on a manual clock."""
    url, wallets = f"local://{tmp_path}/chain.sqlite", tmp_path / "wallets"
    result = invoke("init", "--block-seconds", "0", "--chain", url)
    assert "manual" in result.stdout and "block 0" in result.stdout
    return url, wallets


def invoke(*args, code=0):
    result = runner.invoke(app, ["chain", *map(str, args)])
    assert result.exit_code == code, result.output
    return result


def assert_one_error_line(result, *parts):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    for part in parts:
        assert part in lines[0], (part, lines[0])


def test_init_wallet_register_stake_step_then_metagraph_shows_them(env, tmp_path):
    url, wallets = env
    created = invoke("wallet", "create", "alice", "--hotkey", "hot", "--path", wallets)
    alice = load_wallet("alice", "hot", wallets)
    assert alice.hotkey.ss58_address in created.stdout and alice.coldkeypub.ss58_address in created.stdout

    assert "uid 0" in invoke("register", "alice/hot", "--path", wallets, "--chain", url).stdout
    assert "uid 1" in invoke("register", BOB, "--chain", url).stdout
    assert "1,500.00" in invoke("stake", "alice/hot", "1500", "--path", wallets, "--chain", url).stdout
    invoke("commit", "alice/hot", "round-1 digest", "--path", wallets, "--chain", url)
    assert invoke("step", "3", "--chain", url).stdout.strip() == "block 3"

    shown = invoke("metagraph", "--chain", url).stdout
    assert "block 3: 2 neurons" in shown
    alice_row = next(line for line in shown.splitlines() if alice.hotkey.ss58_address in line)
    assert "│   0 │" in alice_row and "1,500.00" in alice_row and "yes" in alice_row
    bob_row = next(line for line in shown.splitlines() if BOB in line)
    assert "│   1 │" in bob_row and "0.00" in bob_row and "yes" not in bob_row
    assert "@1 round-1 digest" in shown

    chain = LocalChain(tmp_path / "chain.sqlite")  # the CLI wrote what the library reads
    assert chain.metagraph().by_uid(0).coldkey == alice.coldkeypub.ss58_address
    assert f"block 3 {chain.block_hash(3)}" in invoke("block", "--chain", url).stdout
    listed = invoke("commitments", "--at-block", "1", "--chain", url).stdout
    assert alice.hotkey.ss58_address in listed and "round-1 digest" in listed


@pytest.mark.parametrize("amount", ["0", "nan"])
def test_a_bad_stake_amount_is_one_error_line(env, amount):
    url, _ = env
    invoke("register", BOB, "--chain", url)
    assert_one_error_line(invoke("stake", BOB, amount, "--chain", url, code=1), "expected a finite number > 0")


def test_staking_an_unregistered_hotkey_is_one_error_line(env):
    url, _ = env
    assert_one_error_line(invoke("stake", BOB, "5", "--chain", url, code=1), BOB, "not registered")


def test_an_unknown_wallet_is_one_error_line(env):
    url, wallets = env
    result = invoke("register", "nobody", "--path", wallets, "--chain", url, code=1)
    assert_one_error_line(result, "'nobody' is neither an ss58 address nor a wallet")


def test_admin_commands_refuse_a_bittensor_chain():
    result = invoke("step", "--chain", "bittensor://finney?netuid=1", code=1)
    assert_one_error_line(result, "runs a local chain", "btcli")


def test_an_unreachable_chain_is_one_error_line_once_its_retries_run_out(env, tmp_path):
    url, _ = env
    path = tmp_path / "chain.sqlite"
    path.rename(tmp_path / "parked")
    path.mkdir()  # the chain file cannot be opened
    result = invoke("block", "--chain", url + "?retry_s=0", code=1)
    assert_one_error_line(result, "stayed unreachable", "(1 try)", "the path is not a file", "retry_s=")


def test_an_unsupported_chain_url_is_one_error_line():
    assert_one_error_line(invoke("block", "--chain", "ftp://x", code=1), "unsupported form", "local:///")


def test_every_chain_command_has_help():
    for args in ([], ["init"], ["wallet"], ["wallet", "create"], ["register"], ["stake"], ["step"], ["block"],
                 ["metagraph"], ["commit"], ["commitments"]):
        result = runner.invoke(app, ["chain", *args, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, (args, result.output)
