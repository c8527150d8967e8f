"""Tests for moeforge/chain/retry.py: backoff while the chain is unreachable, refusals at once, safe write retries.

Time never passes for real: the wrapper gets an injected sleep that records each wait and moves an
injected clock (and, where a test says so, brings the chain back on the nth wait).
"""

import logging
import random
from collections import Counter
from collections.abc import Callable

import pytest

from moeforge.chain.local import LocalChain
from moeforge.chain.protocol import Commitment, Metagraph
from moeforge.chain.retry import RetryingChain, RetryingLocalChain
from moeforge.retry import RetryPolicy
from moeforge.errors import ChainError, ChainUnavailable, ConfigError

NO_JITTER = RetryPolicy(initial_s=0.5, factor=2.0, max_s=15.0, deadline_s=60.0, jitter=0.0)


class Waits:
    """An injected sleep and clock: each sleep is recorded and moves the clock; ON_SLEEP(n) runs after the nth."""

    def __init__(self, on_sleep: Callable[[int], None] | None = None) -> None:
        self.now = 1000.0
        self.waits: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(len(self.waits))


class Flaky:
    """A Chain over INNER whose calls fail as unreachable: `fail[name]` times before reaching it, or,
    for a write named in `drop_after`, once after it landed (the answer lost with the connection)."""

    def __init__(self, inner: LocalChain) -> None:
        self.inner = inner
        self.fail: Counter[str] = Counter()
        self.drop_after: set[str] = set()
        self.calls: Counter[str] = Counter()

    def _gate(self, name: str) -> None:
        self.calls[name] += 1
        if self.fail[name] > 0:
            self.fail[name] -= 1
            raise ChainUnavailable(f"node down ({self.fail[name]} more)")

    def _landed(self, name: str) -> None:
        if name in self.drop_after:
            self.drop_after.discard(name)
            raise ChainUnavailable("connection dropped before the answer")

    def block(self) -> int:
        self._gate("block")
        return self.inner.block()

    def block_hash(self, block: int) -> str:
        self._gate("block_hash")
        return self.inner.block_hash(block)

    def metagraph(self) -> Metagraph:
        self._gate("metagraph")
        return self.inner.metagraph()

    def commit(self, keypair, data: bytes) -> int:
        self._gate("commit")
        landed = self.inner.commit(keypair, data)
        self._landed("commit")
        return landed

    def commitment(self, hotkey: str, *, at_block: int | None = None) -> Commitment | None:
        self._gate("commitment")
        return self.inner.commitment(hotkey, at_block=at_block)

    def commitments(self, *, at_block: int | None = None) -> dict[str, Commitment]:
        self._gate("commitments")
        return self.inner.commitments(at_block=at_block)

    def set_weights(self, keypair, weights: dict[int, float]) -> None:
        self._gate("set_weights")
        self.inner.set_weights(keypair, weights)
        self._landed("set_weights")

    def weights(self) -> dict[int, dict[int, float]]:
        self._gate("weights")
        return self.inner.weights()


@pytest.fixture
def flaky(local_chain, alice, bob):
    """alice: uid 0, a validator; bob: uid 1."""
    local_chain.register(alice.ss58_address)
    local_chain.register(bob.ss58_address)
    local_chain.add_stake(alice.ss58_address, 10.0)
    return Flaky(local_chain)


def wrap(chain, waits: Waits, policy: RetryPolicy = NO_JITTER) -> RetryingChain:
    return RetryingChain(chain, policy, sleep=waits.sleep, clock=waits.clock, rng=random.Random(0))


# --- backoff and giving up ---------------------------------------------------------------------


def test_a_chain_that_fails_n_times_then_works_succeeds_after_n_retries_with_backoff(flaky, caplog):
    flaky.fail["metagraph"] = 3
    waits = Waits()
    with caplog.at_level(logging.WARNING, logger="moeforge.chain.retry"):
        graph = wrap(flaky, waits).metagraph()
    assert graph.neurons[0].validator_permit and len(graph.neurons) == 2
    assert flaky.calls["metagraph"] == 4
    assert waits.waits == [0.5, 1.0, 2.0]
    assert [r.getMessage() for r in caplog.records] == [
        "chain unreachable (node down (2 more)): retry 1 in 0.5 s",
        "chain unreachable (node down (1 more)): retry 2 in 1.0 s",
        "chain unreachable (node down (0 more)): retry 3 in 2.0 s",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_delays_grow_by_the_factor_up_to_the_cap_with_seeded_jitter():
    policy = RetryPolicy(initial_s=1.0, factor=3.0, max_s=10.0, jitter=0.0)
    assert [policy.delay(n, random.Random(0)) for n in range(1, 6)] == [1.0, 3.0, 9.0, 10.0, 10.0]
    jittery = RetryPolicy(initial_s=1.0, factor=3.0, max_s=10.0, jitter=0.5)
    first, again = random.Random(7), random.Random(7)
    delays = [jittery.delay(n, first) for n in range(1, 7)]
    assert delays == [jittery.delay(n, again) for n in range(1, 7)]  # the same seed, the same waits
    bases = [1.0, 3.0, 9.0, 10.0, 10.0, 10.0]
    assert all(0.5 * base <= d <= base for d, base in zip(delays, bases)), delays
    assert len(set(delays[3:])) == 3  # capped retries still spread out
    huge = RetryPolicy(initial_s=1.0, factor=1e300, max_s=15.0, jitter=0.0)
    assert huge.delay(5, random.Random(0)) == 15.0  # factor^4 overflows a float: the cap, not a crash


def test_past_the_deadline_it_gives_up_saying_how_long_it_tried(flaky):
    flaky.fail["block"] = 100
    waits = Waits()
    policy = RetryPolicy(initial_s=1.0, factor=2.0, max_s=15.0, deadline_s=10.0, jitter=0.0)
    with pytest.raises(ChainUnavailable) as caught:
        wrap(flaky, waits, policy).block()
    message = str(caught.value)
    assert message.startswith("reading the current block: the chain stayed unreachable for 10 s (5 tries)"), message
    assert "Last error: node down (95 more). To wait longer" in message and "retry_s=" in message
    assert waits.waits == [1.0, 2.0, 4.0, 3.0]  # the last wait is cut short at the deadline
    assert flaky.calls["block"] == 5
    assert isinstance(caught.value.__cause__, ChainUnavailable)


def test_a_zero_deadline_never_retries(flaky):
    flaky.fail["block"] = 1
    waits = Waits()
    with pytest.raises(ChainUnavailable, match=r"unreachable for 0\.00 s \(1 try\)"):
        wrap(flaky, waits, RetryPolicy(deadline_s=0)).block()
    assert waits.waits == [] and flaky.calls["block"] == 1


@pytest.mark.parametrize("call, culprit", [
    (lambda chain, alice, carol: chain.commit(alice, b"x" * 129), "129 bytes"),
    (lambda chain, alice, carol: chain.commit(carol, b"hello"), "is not registered"),
    (lambda chain, alice, carol: chain.set_weights(carol, {0: 1.0}), "is not registered"),
    (lambda chain, alice, carol: chain.commitment(alice.ss58_address, at_block=99), "block 99"),
])
def test_a_refusal_is_raised_at_once_and_never_retried(flaky, alice, carol, call, culprit):
    waits = Waits()
    with pytest.raises(ChainError, match=culprit) as caught:
        call(wrap(flaky, waits), alice, carol)
    assert not isinstance(caught.value, ChainUnavailable)
    assert waits.waits == []
    assert sum(flaky.calls[name] for name in ("commit", "set_weights", "commitment")) == 1


def test_a_bad_policy_names_every_bad_field():
    with pytest.raises(ConfigError, match=r"initial_s=0 \(expected > 0\); factor=0.5 \(expected ≥ 1\); "
                                          r"jitter=1.0 \(expected in \[0, 1\)\)"):
        RetryPolicy(initial_s=0, factor=0.5, jitter=1.0)
    with pytest.raises(ConfigError, match=r"max_s=1 \(expected ≥ initial_s \(2\)\)"):
        RetryPolicy(initial_s=2, max_s=1)


# --- writes are not applied twice ---------------------------------------------------------------


def test_a_commit_that_landed_before_the_connection_dropped_is_not_sent_again(flaky, alice):
    flaky.drop_after.add("commit")
    waits = Waits()
    landed = wrap(flaky, waits).commit(alice, b"digest")
    assert flaky.calls["commit"] == 1 and len(waits.waits) == 1
    assert landed == 1 and flaky.inner.commitment(alice.ss58_address) == Commitment(alice.ss58_address, 1, b"digest")


def test_a_commit_that_did_not_land_is_sent_again_even_if_an_older_one_holds_the_same_bytes(flaky, alice):
    assert flaky.inner.commit(alice, b"digest") == 1
    flaky.inner.step(3)
    flaky.fail["commit"] = 1  # refused before it reached the chain
    landed = wrap(flaky, Waits()).commit(alice, b"digest")
    assert flaky.calls["commit"] == 2
    assert landed == 4 and flaky.inner.commitment(alice.ss58_address).block == 4


def test_weights_that_landed_before_the_connection_dropped_are_not_sent_again(flaky, alice):
    flaky.drop_after.add("set_weights")
    wrap(flaky, Waits()).set_weights(alice, {0: 1.0, 1: 3.0})
    assert flaky.calls["set_weights"] == 1
    assert flaky.inner.weights() == {0: pytest.approx({0: 0.25, 1: 0.75})}


def test_weights_that_did_not_land_are_sent_again(flaky, alice):
    flaky.inner.set_weights(alice, {1: 1.0})  # an older, different vector is on the chain
    flaky.fail["set_weights"] = 1
    wrap(flaky, Waits()).set_weights(alice, {0: 1.0, 1: 3.0})
    assert flaky.calls["set_weights"] == 2
    assert flaky.inner.weights() == {0: pytest.approx({0: 0.25, 1: 0.75})}


# --- real backends coming back -------------------------------------------------------------------


def test_a_local_chain_whose_folder_goes_away_is_retried_until_it_comes_back(tmp_path, alice):
    folder, away = tmp_path / "mnt", tmp_path / "unmounted"
    chain = LocalChain(folder / "chain.sqlite", block_seconds=0)
    chain.register(alice.ss58_address)
    folder.rename(away)  # the volume holding the chain is unmounted for a while
    waits = Waits(on_sleep=lambda n: away.rename(folder) if n == 2 else None)
    landed = RetryingLocalChain(chain, NO_JITTER, sleep=waits.sleep, clock=waits.clock).commit(alice, b"after")
    assert waits.waits == [0.5, 1.0]
    assert landed == 1 and chain.commitment(alice.ss58_address).data == b"after"


def test_admin_moves_are_retried_while_the_chain_file_is_not_a_file(local_chain):
    path, parked = local_chain.path, local_chain.path.with_suffix(".parked")
    path.rename(parked)
    path.mkdir()  # something else sits where the chain file was, for a while

    def put_back(n: int) -> None:
        if n == 2:
            path.rmdir()
            parked.rename(path)

    waits = Waits(on_sleep=put_back)
    wrapped = RetryingLocalChain(local_chain, NO_JITTER, sleep=waits.sleep, clock=waits.clock)
    assert wrapped.step(2) == 2
    assert len(waits.waits) == 2 and local_chain.block() == 2
    assert (wrapped.path, wrapped.netuid, wrapped.block_seconds) == (path, 1, 0.0)


def test_a_bittensor_node_that_drops_twice_is_retried_until_it_answers(bittensor_chain, node, alice):
    node.register(alice.ss58_address)
    node.unreachable_for = 2
    waits = Waits()
    graph = wrap(bittensor_chain, waits).metagraph()
    assert graph.hotkeys == (alice.ss58_address,)
    assert waits.waits == [0.5, 1.0] and node.unreachable_for == 0


def test_a_bittensor_node_that_is_down_at_first_use_is_retried_until_it_is_up(bittensor_chain, node):
    node.down = True
    waits = Waits(on_sleep=lambda n: setattr(node, "down", n < 2))
    assert wrap(bittensor_chain, waits).block() == node._head
    assert len(waits.waits) == 2


def test_a_bittensor_write_whose_answer_was_lost_is_not_submitted_twice(bittensor_chain, node, alice):
    node.register(alice.ss58_address)
    node.add_stake(alice.ss58_address, 10.0)
    chain = wrap(bittensor_chain, Waits())
    node.lose_next_answer = True
    landed = chain.commit(alice, b"digest")
    assert [s.call.function for s in node.submitted] == ["set_commitment"]
    assert landed == node.submitted[0].block and chain.commitment(alice.ss58_address).data == b"digest"
    node.lose_next_answer = True
    chain.set_weights(alice, {0: 1.0})
    assert [s.call.function for s in node.submitted] == ["set_commitment", "set_mechanism_weights"]
    assert chain.weights() == {0: pytest.approx({0: 1.0})}
