"""The folder store waits out an outage (its folder gone for a while) instead of re-creating it empty or failing."""

import threading

import pytest

from moeforge.retry import RetryPolicy
from moeforge.errors import StoreUnavailable
from moeforge.store.local import LocalStore


def test_a_put_and_a_get_during_an_outage_wait_for_the_folder_to_come_back(tmp_path):
    store = LocalStore(tmp_path / "store", retry=RetryPolicy(initial_s=0.05, max_s=0.2, deadline_s=10))
    old = store.put(b"before")
    (tmp_path / "store").rename(tmp_path / "away")
    threading.Timer(0.5, (tmp_path / "away").rename, (tmp_path / "store",)).start()
    new = store.put(b"during")  # waits; never writes into a fresh, empty folder in the old one's place
    assert store.get(old) == b"before" and store.get(new) == b"during"
    assert not (tmp_path / "away").exists()


def test_an_outage_past_the_deadline_is_store_unavailable_and_nothing_is_re_created(tmp_path):
    store = LocalStore(tmp_path / "store", retry=RetryPolicy(initial_s=0.05, max_s=0.1, deadline_s=0.3))
    digest = store.put(b"x")
    (tmp_path / "store").rename(tmp_path / "away")
    with pytest.raises(StoreUnavailable, match="the store stayed unreachable .* its folder is gone"):
        store.put(b"y")
    with pytest.raises(StoreUnavailable):
        store.get(digest)
    assert not (tmp_path / "store").exists()


def test_a_new_store_folder_is_created_on_the_first_put(tmp_path):
    store = LocalStore(tmp_path / "deep" / "store")
    assert store.get(store.put(b"first")) == b"first"
