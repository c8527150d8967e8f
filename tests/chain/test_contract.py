"""The Chain contract (moeforge/chain/protocol.py), run against every backend that runs here.

`local`: a real SQLite file on a manual clock. `bittensor`: the real adapter and the real SDK above
its Substrate seam, over `FakeSubstrate` (conftest.py), a node double that holds state per block.
"""

import pytest

from moeforge.chain.protocol import MAX_COMMITMENT_BYTES, Commitment, wait_for_block
from moeforge.errors import ChainError


@pytest.fixture
def neurons(harness, alice, bob, carol):
    """alice: uid 0 with stake (a validator); bob: uid 1, no stake; carol: unregistered."""
    assert harness.register(alice.ss58_address) == 0
    assert harness.register(bob.ss58_address) == 1
    harness.stake(alice.ss58_address, 100.0)
    return harness


def test_metagraph_lists_registered_hotkeys_with_stake_and_permits(neurons, alice, bob, carol):
    graph = neurons.chain.metagraph()
    assert graph.hotkeys == (alice.ss58_address, bob.ss58_address)
    first, second = graph.neurons
    assert (first.uid, first.stake, first.validator_permit) == (0, 100.0, True)
    assert (second.uid, second.stake, second.validator_permit) == (1, 0.0, False)
    assert graph.by_hotkey(bob.ss58_address) == second and graph.by_uid(0) == first
    assert graph.by_hotkey(carol.ss58_address) is None and graph.by_uid(9) is None
    assert graph.validators == (first,)
    assert graph.block == neurons.chain.block()


def test_stake_moves_the_validator_permit(neurons, alice, bob):
    neurons.stake(bob.ss58_address, 5.0)
    graph = neurons.chain.metagraph()
    assert [n.stake for n in graph.neurons] == [100.0, 5.0]
    assert all(n.validator_permit for n in graph.neurons)  # both staked, fewer than max validators


def test_block_hashes_are_stable_distinct_and_only_for_existing_blocks(neurons):
    head = neurons.chain.block()
    neurons.step(3)
    assert neurons.chain.block() == head + 3
    hashes = [neurons.chain.block_hash(b) for b in range(head, head + 4)]
    assert len(set(hashes)) == 4
    assert all(h.startswith("0x") and len(h) == 66 for h in hashes)
    assert [neurons.chain.block_hash(b) for b in range(head, head + 4)] == hashes
    with pytest.raises(ChainError, match=f"block {head + 4}"):
        neurons.chain.block_hash(head + 4)


def test_commit_then_read_back(neurons, alice):
    data = bytes(range(256))[:MAX_COMMITMENT_BYTES]  # not utf-8: bytes must survive as bytes
    before = neurons.chain.block()
    landed = neurons.chain.commit(alice, data)
    assert landed > before
    assert neurons.chain.commitment(alice.ss58_address) == Commitment(alice.ss58_address, landed, data)
    assert neurons.chain.commitments() == {alice.ss58_address: Commitment(alice.ss58_address, landed, data)}


def test_commitment_as_of_an_earlier_block_is_the_latest_then(neurons, alice, bob):
    first = neurons.chain.commit(alice, b"round-1")
    neurons.step(2)
    second = neurons.chain.commit(alice, b"round-2")
    other = neurons.chain.commit(bob, b"bob-1")
    neurons.step(1)
    assert first < second
    assert neurons.chain.commitment(alice.ss58_address, at_block=first).data == b"round-1"
    assert neurons.chain.commitment(alice.ss58_address, at_block=second - 1).data == b"round-1"
    assert neurons.chain.commitment(alice.ss58_address, at_block=second).data == b"round-2"
    assert neurons.chain.commitment(alice.ss58_address).block == second
    assert neurons.chain.commitment(alice.ss58_address, at_block=first - 1) is None
    assert {h: c.data for h, c in neurons.chain.commitments(at_block=first).items()} == {alice.ss58_address: b"round-1"}
    latest = neurons.chain.commitments()
    assert {h: (c.block, c.data) for h, c in latest.items()} == {
        alice.ss58_address: (second, b"round-2"), bob.ss58_address: (other, b"bob-1")}


def test_reading_state_as_of_a_future_block_is_refused(neurons, alice):
    head = neurons.chain.block()
    with pytest.raises(ChainError, match=f"block {head + 5}"):
        neurons.chain.commitment(alice.ss58_address, at_block=head + 5)
    with pytest.raises(ChainError, match=f"block {head + 5}"):
        neurons.chain.commitments(at_block=head + 5)


def test_commitment_over_128_bytes_is_refused_and_nothing_lands(neurons, alice):
    with pytest.raises(ChainError, match=r"129 bytes.*at most 128"):
        neurons.chain.commit(alice, b"x" * (MAX_COMMITMENT_BYTES + 1))
    assert neurons.chain.commitment(alice.ss58_address) is None


def test_commit_from_an_unregistered_hotkey_names_it(neurons, carol):
    with pytest.raises(ChainError, match=f"{carol.ss58_address} is not registered"):
        neurons.chain.commit(carol, b"hello")
    assert neurons.chain.commitments() == {}


def test_set_weights_then_read_back_normalised(neurons, alice):
    neurons.chain.set_weights(alice, {0: 1.0, 1: 3.0})
    neurons.step(1)
    assert neurons.chain.weights() == {0: pytest.approx({0: 0.25, 1: 0.75}, abs=1e-4)}
    neurons.chain.set_weights(alice, {1: 2.0})  # a new vector replaces the old one
    assert neurons.chain.weights() == {0: pytest.approx({1: 1.0})}


def test_weights_from_a_hotkey_without_permit_are_refused(neurons, bob):
    with pytest.raises(ChainError, match=f"{bob.ss58_address}.*no validator permit"):
        neurons.chain.set_weights(bob, {0: 1.0})
    assert neurons.chain.weights() == {}


@pytest.mark.parametrize("weights, culprit", [({0: -1.0, 1: 1.0}, "negative or non-finite"),
                                              ({0: float("nan")}, "negative or non-finite"),
                                              ({0: 0.0}, "all zero"),
                                              ({0: 1.0, 9: 1.0}, r"uids \[9\]")])
def test_bad_weights_are_refused_naming_the_problem(neurons, alice, weights, culprit):
    with pytest.raises(ChainError, match=culprit):
        neurons.chain.set_weights(alice, weights)
    assert neurons.chain.weights() == {}


def test_wait_for_block_returns_once_the_chain_reaches_it(neurons):
    head = neurons.chain.block()
    assert wait_for_block(neurons.chain, head, timeout_s=1, poll_s=0.01) == head
    with pytest.raises(ChainError, match=f"waiting for block {head + 1}.*at block {head}"):
        wait_for_block(neurons.chain, head + 1, timeout_s=0.05, poll_s=0.01)
