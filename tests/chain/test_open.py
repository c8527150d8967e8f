"""Tests for moeforge/chain/open.py: chain URLs → backends (wrapped for retries), and every malformed URL named."""

import re

import pytest

from moeforge.chain.bittensor import BittensorChain
from moeforge.chain.local import LocalChain
from moeforge.chain.open import open_chain
from moeforge.chain.retry import RetryingChain, RetryingLocalChain
from moeforge.retry import RetryPolicy
from moeforge.cli import settings
from moeforge.errors import ChainUnavailable, ConfigError


def test_local_url_with_options(tmp_path):
    chain = open_chain(f"local://{tmp_path}/c.sqlite?block_seconds=0&netuid=3&max_validators=2")
    assert isinstance(chain, RetryingLocalChain) and isinstance(chain.inner, LocalChain)
    assert (chain.path, chain.block_seconds, chain.netuid, chain.max_validators) == (tmp_path / "c.sqlite", 0, 3, 2)
    assert chain.block() == 0
    assert chain.step(2) == 2 and chain.inner.block() == 2  # admin moves reach the ledger through the wrapper


def test_keyword_options_override_the_url(tmp_path):
    chain = open_chain(f"local://{tmp_path}/c.sqlite?block_seconds=12", block_seconds=0, clock=lambda: 5.0)
    assert chain.block_seconds == 0


def test_the_default_settings_url_opens_a_local_chain_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEFORGE_HOME", str(tmp_path))
    monkeypatch.delenv("MOEFORGE_CHAIN", raising=False)
    chain = open_chain(settings.chain_url())
    assert isinstance(chain.inner, LocalChain) and chain.path == tmp_path / "chain.sqlite"


def test_bittensor_urls(node, tmp_path):
    wrapped = open_chain(f"bittensor://finney?netuid=7&wallet=v&hotkey=h&path={tmp_path}&finalize=1", substrate=node)
    assert isinstance(wrapped, RetryingChain) and not hasattr(wrapped, "step")  # no local admin moves
    chain = wrapped.inner
    assert isinstance(chain, BittensorChain)
    assert (chain.network, chain.netuid, chain.wallet_name, chain.hotkey_name) == ("finney", 7, "v", "h")
    assert chain.wallet_path == tmp_path and chain._finalize is True
    endpoint = open_chain("bittensor://ws://127.0.0.1:9946?netuid=2", substrate=node, retry=False)
    assert (endpoint.network, endpoint.netuid) == ("ws://127.0.0.1:9946", 2)
    assert endpoint.block() == node._head  # the injected substrate is the one it talks to


def test_retry_options_set_or_turn_off_the_policy(tmp_path, node):
    url = f"local://{tmp_path}/c.sqlite?block_seconds=0"
    assert open_chain(url).policy == RetryPolicy()
    assert open_chain(url + "&retry_s=7").policy.deadline_s == 7
    assert open_chain("bittensor://finney?netuid=7&retry_s=0", substrate=node).policy.deadline_s == 0
    custom = RetryPolicy(initial_s=0.1, max_s=1.0, deadline_s=30.0)
    assert open_chain(url, retry=custom).policy is custom
    assert open_chain(url + "&retry_s=9", retry=custom).policy == RetryPolicy(initial_s=0.1, max_s=1.0, deadline_s=9.0)
    assert isinstance(open_chain(url, retry=False), LocalChain)


def test_opening_an_unreachable_local_chain_is_retried_then_given_up(tmp_path):
    path = tmp_path / "c.sqlite"
    path.mkdir()  # a file that cannot be opened as one, as when the volume holding it is half-mounted
    fast = RetryPolicy(initial_s=0.001, max_s=0.002, deadline_s=0.02, jitter=0)
    with pytest.raises(ChainUnavailable, match=r"opening local chain .*c\.sqlite: the chain stayed unreachable for "
                                               r"\d\.\d+ s \((\d+) tries\).*retry_s") as caught:
        open_chain(f"local://{path}", retry=fast)
    assert "the path is not a file" in str(caught.value)
    assert int(re.search(r"\((\d+) tries\)", str(caught.value)).group(1)) >= 2  # it did retry
    with pytest.raises(ChainUnavailable, match=r"unreachable for 0\.\d+ s \(1 try\)"):
        open_chain(f"local://{path}?retry_s=0")
    with pytest.raises(ChainUnavailable, match="unable to open database file") as bare:
        open_chain(f"local://{path}", retry=False)
    assert "stayed unreachable" not in str(bare.value)


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
    ("local:///tmp/c.sqlite?retry_s=-1", r"retry_s=-1 is not a valid deadline.*deadline_s=-1.0 \(expected ≥ 0"),
    ("local:///tmp/c.sqlite?retry_s=soon", "retry_s='soon' is not a valid float"),
])
def test_bad_urls_are_config_errors_naming_the_problem(url, culprit):
    with pytest.raises(ConfigError, match=culprit):
        open_chain(url)


def test_retry_s_with_retries_turned_off_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="retry_s=5 asks for retries, but retry=False"):
        open_chain(f"local://{tmp_path}/c.sqlite?retry_s=5", retry=False)


def test_an_option_for_the_other_backend_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"\['block_seconds'\] do not apply"):
        open_chain("bittensor://finney?netuid=1", block_seconds=0)
    with pytest.raises(ConfigError, match=r"\['substrate'\] do not apply"):
        open_chain(f"local://{tmp_path}/c.sqlite", substrate=object())
