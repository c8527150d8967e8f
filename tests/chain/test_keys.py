"""Tests for moeforge/chain/keys.py: btcli-compatible wallets and hotkey-bound signatures."""

import bittensor as bt
import pytest

from moeforge.chain.keys import (
    check_ss58,
    create_wallet,
    keypair_from_seed,
    keypair_from_uri,
    load_wallet,
    sign,
    verify,
)
from moeforge.errors import ChainError, ConfigError

MESSAGE = b"sha256(delta) || hotkey || round 12"


def test_created_wallet_loads_back_and_through_the_sdk(tmp_path):
    created = create_wallet("miner", "hot1", tmp_path)
    loaded = load_wallet("miner", "hot1", tmp_path)
    sdk = bt.Wallet("miner", "hot1", str(tmp_path))  # what btcli and the SDK read
    assert loaded.hotkey.ss58_address == created.hotkey.ss58_address == sdk.hotkey.ss58_address
    assert loaded.coldkeypub.ss58_address == sdk.coldkey.ss58_address == sdk.coldkeypub.ss58_address
    assert not sdk.coldkey_file.is_encrypted()  # local use: no password prompt
    for name in ("coldkey", "coldkeypub.txt", "hotkeys/hot1", "hotkeys/hot1pub.txt"):
        assert (tmp_path / "miner" / name).is_file(), name
    assert verify(created.hotkey.ss58_address, MESSAGE, sign(sdk.hotkey, MESSAGE))


def test_a_second_hotkey_shares_the_coldkey(tmp_path):
    first = create_wallet("owner", "a", tmp_path)
    second = create_wallet("owner", "b", tmp_path)
    assert second.coldkeypub.ss58_address == first.coldkeypub.ss58_address
    assert second.hotkey.ss58_address != first.hotkey.ss58_address


def test_an_existing_hotkey_is_kept_unless_overwrite(tmp_path):
    first = create_wallet("w", "h", tmp_path)
    with pytest.raises(ConfigError, match=r"already has hotkey 'h'.*overwrite"):
        create_wallet("w", "h", tmp_path)
    assert load_wallet("w", "h", tmp_path).hotkey.ss58_address == first.hotkey.ss58_address
    replaced = create_wallet("w", "h", tmp_path, overwrite=True)
    assert load_wallet("w", "h", tmp_path).hotkey.ss58_address == replaced.hotkey.ss58_address
    assert replaced.hotkey.ss58_address != first.hotkey.ss58_address


def test_loading_a_missing_wallet_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"no key file at .*nobody/hotkeys/default.*wallet create"):
        load_wallet("nobody", "default", tmp_path)


def test_a_signature_verifies_for_its_hotkey_only(alice, bob):
    signature = sign(alice, MESSAGE)
    assert len(signature) == 64
    assert verify(alice.ss58_address, MESSAGE, signature)
    assert not verify(bob.ss58_address, MESSAGE, signature)  # a copied payload does not verify for another key
    assert not verify(alice.ss58_address, MESSAGE + b"!", signature)


@pytest.mark.parametrize("garble", [lambda s: s[:-1] + bytes([s[-1] ^ 1]), lambda s: s[:32], lambda s: b"",
                                    lambda s: b"\x00" * 64, lambda s: b"\xff" * 64, lambda s: s + b"\x00"])
def test_a_garbled_signature_is_false_not_an_exception(alice, garble):
    assert verify(alice.ss58_address, MESSAGE, garble(sign(alice, MESSAGE))) is False


@pytest.mark.parametrize("address", ["", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQZ", "not-an-address", "0x1234"])
def test_a_malformed_address_is_a_chain_error_naming_it(alice, address):
    with pytest.raises(ChainError, match=f"{address!r} is not an ss58 address"):
        verify(address, MESSAGE, sign(alice, MESSAGE))
    with pytest.raises(ChainError, match="is not an ss58 address"):
        check_ss58(address)


def test_dev_keypairs_are_deterministic_and_distinct():
    assert keypair_from_uri("//Alice").ss58_address == keypair_from_uri("//Alice").ss58_address
    assert keypair_from_uri("//Alice").ss58_address != keypair_from_uri("//Bob").ss58_address
    seed = bytes(range(32))
    assert keypair_from_seed(seed).ss58_address == keypair_from_seed(seed.hex()).ss58_address
    assert keypair_from_seed(seed).ss58_address == bt.sp_core.Keypair.create_from_seed(seed).ss58_address


def test_bad_seeds_and_uris_are_config_errors():
    with pytest.raises(ConfigError, match="seed is 3 bytes"):
        keypair_from_seed(b"abc")
    with pytest.raises(ConfigError, match="secret URI"):
        keypair_from_uri("definitely not a uri or mnemonic")
