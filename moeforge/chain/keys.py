"""Identities: sr25519 keypairs and btcli-compatible wallets from the Bittensor SDK, and hotkey signatures.

A role is its hotkey. `sign` and `verify` bind a message to an ss58 address, the same address the
chain lists in its metagraph, so a payload signed by one hotkey never verifies for another.
The SDK (`bittensor.wallet`, `bittensor.sp_core`) is imported inside the functions: importing this
module stays cheap, and the first call pays the SDK's import (about half a second).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from moeforge.errors import ChainError, ConfigError

if TYPE_CHECKING:
    from bittensor.sp_core import Keypair
    from bittensor.wallet import Wallet

log = logging.getLogger(__name__)

DEFAULT_WALLET_PATH = Path("~/.bittensor/wallets")  # btcli's default, the SDK's DEFAULT_WALLET_PATH
SIGNATURE_BYTES = 64  # sr25519


def create_wallet(name: str, hotkey: str = "default", path: str | Path = DEFAULT_WALLET_PATH, *,
                  overwrite: bool = False) -> Wallet:
    """Write wallet NAME with hotkey HOTKEY under PATH in btcli's layout; reuse NAME's coldkey if it exists.

    Layout: `PATH/NAME/coldkey`, `coldkeypub.txt`, `hotkeys/HOTKEY`, `hotkeys/HOTKEYpub.txt`, the
    files `btcli` and `bittensor.Wallet` read. The coldkey is written *unencrypted* so local tools run
    without a password prompt: fine for a local chain or a test network, not for a coldkey that holds
    real TAO (create that one with `btcli wallet create` and a password). Hotkeys are unencrypted in
    btcli too. The mnemonics are not shown; regenerate from the key files, or use btcli for a key you
    must back up. An existing hotkey file → ConfigError unless `overwrite`.
    """
    from bittensor.wallet import Wallet

    wallet = Wallet(name=name, hotkey=hotkey, path=str(Path(path).expanduser()))
    has_coldkey = Path(wallet.coldkey_file.path).exists()
    if Path(wallet.hotkey_file.path).exists() and not overwrite:
        raise ConfigError(
            f"wallet {name!r} already has hotkey {hotkey!r} at {wallet.hotkey_file.path}. "
            f"Load it with load_wallet (or `moeforge chain register {name}/{hotkey}`), pick another --hotkey, "
            "or pass overwrite=True (--overwrite) to replace it."
        )
    if overwrite or not has_coldkey:
        wallet.create_new_coldkey(use_password=False, overwrite=True, suppress=True)
    wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    log.debug("wallet %s/%s: coldkey %s, hotkey %s (%s)", name, hotkey, wallet.coldkeypub.ss58_address,
             wallet.hotkey.ss58_address, wallet.hotkey_file.path)
    return wallet


def load_wallet(name: str, hotkey: str = "default", path: str | Path = DEFAULT_WALLET_PATH) -> Wallet:
    """Open wallet NAME/HOTKEY under PATH; missing or unreadable key files → ConfigError naming the file."""
    from bittensor.sp_core import KeyfileError
    from bittensor.wallet import Wallet

    wallet = Wallet(name=name, hotkey=hotkey, path=str(Path(path).expanduser()))
    for keyfile in (wallet.hotkey_file, wallet.coldkeypub_file):
        if not Path(keyfile.path).exists():
            raise ConfigError(
                f"wallet {name!r}/{hotkey!r}: no key file at {keyfile.path}. "
                f"Create it with `moeforge chain wallet create {name} --hotkey {hotkey} --path {path}` "
                "or `btcli wallet create`, or check --path."
            )
    try:
        wallet.get_hotkey()
        wallet.coldkeypub  # noqa: B018 (loads and checks the public coldkey)
    except (KeyfileError, ValueError, OSError) as exc:
        raise ConfigError(f"wallet {name!r}/{hotkey!r} under {path}: cannot read its key files ({exc}).") from exc
    return wallet


def keypair_from_seed(seed: bytes | str) -> Keypair:
    """The sr25519 keypair of a 32-byte seed (bytes or hex); for tests and dev keys."""
    from bittensor.sp_core import Keypair

    raw = bytes.fromhex(seed.removeprefix("0x")) if isinstance(seed, str) else seed
    if len(raw) != 32:
        raise ConfigError(f"seed is {len(raw)} bytes; an sr25519 seed is 32 bytes (64 hex digits).")
    return Keypair.create_from_seed(raw)


def keypair_from_uri(uri: str) -> Keypair:
    """The sr25519 keypair of a Substrate secret URI such as `//Alice` or `//miner/1`; for tests and dev chains."""
    from bittensor.sp_core import Keypair

    try:
        return Keypair.create_from_uri(uri)
    except ValueError as exc:
        raise ConfigError(f"secret URI {uri!r} is not valid ({exc}); expected e.g. '//Alice' or a mnemonic.") from exc


def sign(keypair: Keypair, message: bytes) -> bytes:
    """The 64-byte sr25519 signature of MESSAGE by KEYPAIR (its `ss58_address` is the signer)."""
    return bytes(keypair.sign(message))


def verify(hotkey_ss58: str, message: bytes, signature: bytes) -> bool:
    """Whether SIGNATURE is HOTKEY_SS58's signature of MESSAGE; False for any other key or a garbled signature.

    A malformed address is a caller's mistake, not a bad signature → ChainError naming it.
    """
    from bittensor.sp_core import verify as sp_verify

    check_ss58(hotkey_ss58)
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        return bool(sp_verify(bytes(message), bytes(signature), hotkey_ss58))
    except ValueError:  # a 64-byte string that is not a point/scalar pair
        return False


def check_ss58(address: str) -> str:
    """ADDRESS, if it is a well-formed ss58 address; otherwise ChainError naming it."""
    from bittensor.sp_core import ss58_decode

    try:
        ss58_decode(address)
    except (ValueError, TypeError) as exc:
        raise ChainError(
            f"{address!r} is not an ss58 address ({exc}); expected a hotkey such as "
            "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY (see `moeforge chain metagraph`)."
        ) from exc
    return address
