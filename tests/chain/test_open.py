"""Tests for moeforge/chain/open.py: chain URLs → backends, and every malformed URL named."""

import pytest

from moeforge.chain.bittensor import BittensorChain
from moeforge.chain.local import LocalChain
from moeforge.chain.open import open_chain
from moeforge.cli import settings
from moeforge.errors import ConfigError


def test_local_url_with_options(tmp_path):
    chain = open_chain(f"local://{tmp_path}/c.sqlite?block_seconds=0&netuid=3&max_validators=2")
    assert isinstance(chain, LocalChain)
    assert (chain.path, chain.block_seconds, chain.netuid, chain.max_validators) == (tmp_path / "c.sqlite", 0, 3, 2)
    assert chain.block() == 0


def test_keyword_options_override_the_url(tmp_path):
    chain = open_chain(f"local://{tmp_path}/c.sqlite?block_seconds=12", block_seconds=0, clock=lambda: 5.0)
    assert chain.block_seconds == 0


def test_the_default_settings_url_opens_a_local_chain_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEFORGE_HOME", str(tmp_path))
    monkeypatch.delenv("MOEFORGE_CHAIN", raising=False)
    chain = open_chain(settings.chain_url())
    assert isinstance(chain, LocalChain) and chain.path == tmp_path / "chain.sqlite"


def test_bittensor_urls(node, tmp_path):
    chain = open_chain(f"bittensor://finney?netuid=7&wallet=v&hotkey=h&path={tmp_path}&finalize=1", substrate=node)
    assert isinstance(chain, BittensorChain)
    assert (chain.network, chain.netuid, chain.wallet_name, chain.hotkey_name) == ("finney", 7, "v", "h")
    assert chain.wallet_path == tmp_path and chain._finalize is True
    endpoint = open_chain("bittensor://ws://127.0.0.1:9946?netuid=2", substrate=node)
    assert (endpoint.network, endpoint.netuid) == ("ws://127.0.0.1:9946", 2)
    assert endpoint.block() == node._head  # the injected substrate is the one it talks to


@pytest.mark.parametrize("url, culprit", [
    ("postgres://db/chain", "unsupported form; expected one of: local:///abs"),
    ("chain.sqlite", "unsupported form"),
    ("local://relative/chain.sqlite", "needs an absolute path"),
    ("local:///tmp/c.sqlite?speed=3", "unknown option 'speed'"),
    ("local:///tmp/c.sqlite?block_seconds=fast", "block_seconds='fast' is not a valid float"),
    ("bittensor://finney", "netuid is missing"),
    ("bittensor://?netuid=1", "name the network"),
    ("bittensor://finney?netuid=one", "netuid='one' is not a valid int"),
    ("bittensor://finney?netuid=1&finalize=maybe", "finalize='maybe'"),
    ("bittensor://nowhere?netuid=1", "nowhere"),
])
def test_bad_urls_are_config_errors_naming_the_problem(url, culprit):
    with pytest.raises(ConfigError, match=culprit):
        open_chain(url)


def test_an_option_for_the_other_backend_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"\['block_seconds'\] do not apply"):
        open_chain("bittensor://finney?netuid=1", block_seconds=0)
    with pytest.raises(ConfigError, match=r"\['substrate'\] do not apply"):
        open_chain(f"local://{tmp_path}/c.sqlite", substrate=object())
