"""Retries for a chain that cannot be reached for a while: exponential backoff up to a deadline.

DESIGN.md "The network": every role reaches the others only through the chain, so a node restart,
a dropped websocket or an unmounted chain file must not end a round. `RetryingChain` wraps any
`protocol.Chain` and implements the same Protocol; `open.open_chain` wraps every backend in it by
default. It retries `ChainUnavailable` only (the backend says the chain cannot be reached right
now), waiting `initial_s`, `initial_s·factor`, … (at most `max_s`, each shortened by up to `jitter`
so that many clients do not retry in step), logging one warning per retry; once `deadline_s` has
passed since the call began it raises `ChainUnavailable` saying how long it tried and what to check.
Any other `ChainError` is a refusal (an over-long commitment, an unknown hotkey, no permit): it is
raised at once, never retried.

Writes are safe to retry. A try that failed as unreachable may still have landed (the node took the
extrinsic, then the connection dropped before it answered), so before sending again the wrapper
checks whether it did:

- `commit`: commitments are latest-wins per hotkey. The head is read before the first try; on a
  retry, if the hotkey's newest commitment holds the same bytes in a later block, that was this
  write, and its block is returned without committing again. Otherwise committing again lands the
  same bytes once more, which the next reader cannot tell from one commit.
- `set_weights`: weights are latest-wins per validator. On a retry, if the validator's row already
  holds this vector (within 1e-4, Bittensor's u16 rounding), it is not sent again; the chain then
  holds the same vector either way (if that vector came from an earlier call, Bittensor's
  LastUpdate is not refreshed until the next set_weights). Timelocked (commit-reveal) weights stay
  hidden until revealed, so a retry commits them again and the later, identical vector wins.
- `RetryingLocalChain`'s admin writes (register, add_stake, step): each is one SQLite transaction,
  so a `ChainUnavailable` means it rolled back and did not land; `register` is idempotent anyway.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from moeforge.chain.protocol import Chain, Commitment, Metagraph, normalise_weights
from moeforge.retry import RetryPolicy, call_with_retries

if TYPE_CHECKING:
    from bittensor.sp_core import Keypair

    from moeforge.chain.local import LocalChain

log = logging.getLogger(__name__)

T = TypeVar("T")
_WEIGHT_TOLERANCE = 1e-4  # a weight read back from Bittensor went through u16


class RetryingChain:
    """A `protocol.Chain` that retries its INNER chain's `ChainUnavailable` errors under a `RetryPolicy`.

    `sleep`, `clock` (monotonic seconds) and `rng` (the jitter) are for tests.
    """

    def __init__(
        self,
        inner: Chain,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self._sleep, self._clock, self._rng = sleep, clock, rng or random.Random()

    def __repr__(self) -> str:
        return f"{self.inner!r} with retries for up to {self.policy.deadline_s:g} s"

    # --- the Chain protocol -------------------------------------------------------------------

    def block(self) -> int:
        return self._retry("reading the current block", lambda _: self.inner.block())

    def block_hash(self, block: int) -> str:
        return self._retry(f"reading the hash of block {block}", lambda _: self.inner.block_hash(block))

    def metagraph(self) -> Metagraph:
        return self._retry("reading the metagraph", lambda _: self.inner.metagraph())

    def commit(self, keypair: Keypair, data: bytes) -> int:
        hotkey = keypair.ss58_address
        since: list[int] = []  # the head before the first try that may have sent the commitment

        def attempt(retry: int) -> int:
            if since:  # an earlier try may have landed before the connection dropped
                landed = self.inner.commitment(hotkey)
                if landed is not None and landed.data == data and landed.block > since[0]:
                    log.info("commitment from %s had landed in block %d before the connection dropped; "
                             "not sending it again", hotkey, landed.block)
                    return landed.block
            else:
                since.append(self.inner.block())
            return self.inner.commit(keypair, data)

        return self._retry(f"committing {len(data)} bytes from {hotkey}", attempt)

    def commitment(self, hotkey: str, *, at_block: int | None = None) -> Commitment | None:
        return self._retry(f"reading the commitment of {hotkey}",
                           lambda _: self.inner.commitment(hotkey, at_block=at_block))

    def commitments(self, *, at_block: int | None = None) -> dict[str, Commitment]:
        return self._retry("reading commitments", lambda _: self.inner.commitments(at_block=at_block))

    def set_weights(self, keypair: Keypair, weights: dict[int, float]) -> None:
        hotkey = keypair.ss58_address

        def attempt(retry: int) -> None:
            if retry and self._weights_hold(hotkey, weights):
                log.info("weights from %s are already on the chain (an earlier try landed before the connection "
                         "dropped); not sending them again", hotkey)
                return
            self.inner.set_weights(keypair, weights)

        self._retry(f"setting weights from {hotkey}", attempt)

    def weights(self) -> dict[int, dict[int, float]]:
        return self._retry("reading weights", lambda _: self.inner.weights())

    def idle(self, hotkey: str, until: int | None) -> int:
        return self._retry(f"telling the chain {hotkey} is idle", lambda _: self.inner.idle(hotkey, until))  # idempotent

    # --- internals ---------------------------------------------------------------------------

    def _retry(self, what: str, attempt: Callable[[int], T]) -> T:
        return call_with_retries(attempt, what, self.policy, sleep=self._sleep, clock=self._clock, rng=self._rng)

    def _weights_hold(self, hotkey: str, weights: dict[int, float]) -> bool:
        """Whether HOTKEY's row of weights on the chain is already WEIGHTS (normalised)."""
        vector = normalise_weights(weights, hotkey)
        neuron = self.inner.metagraph().by_hotkey(hotkey)
        if neuron is None:
            return False
        row = self.inner.weights().get(neuron.uid, {})
        return row.keys() == vector.keys() and all(abs(row[uid] - w) <= _WEIGHT_TOLERANCE for uid, w in vector.items())


class RetryingLocalChain(RetryingChain):
    """A `RetryingChain` over a `LocalChain`, with its settings and admin moves (the CLI's, `network up`'s)."""

    inner: LocalChain

    def __init__(
        self,
        inner: LocalChain,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(inner, policy, sleep=sleep, clock=clock, rng=rng)

    @property
    def path(self) -> Path:
        return self.inner.path

    @property
    def netuid(self) -> int:
        return self.inner.netuid

    @property
    def block_seconds(self) -> float:
        return self.inner.block_seconds

    @property
    def lockstep_s(self) -> float:
        return self.inner.lockstep_s

    @property
    def max_validators(self) -> int:
        return self.inner.max_validators

    def register(self, hotkey_ss58: str, coldkey_ss58: str | None = None) -> int:
        """`LocalChain.register`, retried while the file cannot be reached (idempotent)."""
        return self._retry(f"registering {hotkey_ss58}", lambda _: self.inner.register(hotkey_ss58, coldkey_ss58))

    def add_stake(self, hotkey: str, amount: float) -> float:
        """`LocalChain.add_stake`, retried while the file cannot be reached (a failed try rolled back)."""
        return self._retry(f"adding stake to {hotkey}", lambda _: self.inner.add_stake(hotkey, amount))

    def step(self, n_blocks: int = 1) -> int:
        """`LocalChain.step`, retried while the file cannot be reached (a failed try rolled back)."""
        return self._retry(f"stepping {n_blocks} blocks", lambda _: self.inner.step(n_blocks))
