"""The Chain protocol: identities, stake, commitments and weights, as our own types.

DESIGN.md "The network": roles talk only through a chain and an artifact store. Two backends
implement this Protocol, `local.LocalChain` (an embedded SQLite ledger, the default) and
`bittensor.BittensorChain` (a subnet on a real Bittensor network); `open.open_chain` is the one
place that picks one. The rules both backends share live here as plain functions.

Blocks, as on Bittensor: a write (commit, set_weights) lands in the block after the head it was sent
at, so state *as of* block b is final once `block() >= b`. `commitment(hotkey)` with no block reads
the newest state, including a write that has landed in a block the head has not yet reached.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from moeforge.errors import ChainError

if TYPE_CHECKING:
    from bittensor.sp_core import Keypair

log = logging.getLogger(__name__)

MAX_COMMITMENT_BYTES = 128  # Bittensor's Commitments pallet: one Raw field holds at most 128 bytes


@dataclass(frozen=True)
class Neuron:
    uid: int
    hotkey: str  # ss58
    coldkey: str  # ss58
    stake: float  # stake weight in the subnet's unit (total stake in alpha on Bittensor)
    validator_permit: bool


@dataclass(frozen=True)
class Metagraph:
    netuid: int
    block: int  # the block this view was read at
    neurons: tuple[Neuron, ...]  # ordered by uid

    @property
    def hotkeys(self) -> tuple[str, ...]:
        return tuple(n.hotkey for n in self.neurons)

    @property
    def validators(self) -> tuple[Neuron, ...]:
        return tuple(n for n in self.neurons if n.validator_permit)

    def by_hotkey(self, hotkey: str) -> Neuron | None:
        return next((n for n in self.neurons if n.hotkey == hotkey), None)

    def by_uid(self, uid: int) -> Neuron | None:
        return next((n for n in self.neurons if n.uid == uid), None)


@dataclass(frozen=True)
class Commitment:
    hotkey: str
    block: int  # the block it landed in
    data: bytes  # at most MAX_COMMITMENT_BYTES


class Chain(Protocol):
    """What the network roles need from a chain; every argument and result is one of our types."""

    def block(self) -> int: ...

    def block_hash(self, block: int) -> str: ...  # 0x-hex; a block that does not exist yet → ChainError

    def metagraph(self) -> Metagraph: ...

    def commit(self, keypair: Keypair, data: bytes) -> int: ...  # → the block it landed in

    def commitment(self, hotkey: str, *, at_block: int | None = None) -> Commitment | None: ...

    def commitments(self, *, at_block: int | None = None) -> dict[str, Commitment]: ...

    def set_weights(self, keypair: Keypair, weights: dict[int, float]) -> None: ...

    def weights(self) -> dict[int, dict[int, float]]: ...  # validator uid → {uid: weight}, rows sum to 1

    def idle(self, hotkey: str, until: int | None) -> int: ...  # nothing to do before block UNTIL (None: ever); a
    # lock-step local chain advances once every neuron is idle, a real chain ignores it; → the head


def wait_for_block(chain: Chain, block: int, *, timeout_s: float = 120.0, poll_s: float = 0.5,
                   hotkey: str | None = None) -> int:
    """Poll until the chain's head reaches BLOCK and return the head; ChainError after TIMEOUT_S. With HOTKEY, the
    waiting role tells the chain it is idle until BLOCK (what lets a lock-step chain move on)."""
    deadline = time.monotonic() + timeout_s
    head = chain.block()
    while head < block:
        if hotkey is not None:
            head = chain.idle(hotkey, block)
            if head >= block:
                break
        if time.monotonic() >= deadline:
            raise ChainError(
                f"timed out after {timeout_s:.0f}s waiting for block {block}; the chain is at block {head}. "
                "Is the chain advancing (a local chain with block_seconds=0 only moves with `moeforge chain step`)?"
            )
        time.sleep(poll_s)
        head = chain.block()
    return head


def check_commitment(hotkey: str, data: bytes) -> bytes:
    """DATA as bytes if it fits a commitment; otherwise ChainError naming the hotkey and the size."""
    if not isinstance(data, (bytes, bytearray)):
        raise ChainError(f"commitment from {hotkey}: expected bytes, got {type(data).__name__}.")
    if len(data) > MAX_COMMITMENT_BYTES:
        raise ChainError(
            f"commitment from {hotkey} is {len(data)} bytes; a commitment holds at most "
            f"{MAX_COMMITMENT_BYTES}. Commit a digest (e.g. sha256, 32 bytes) and put the payload in the store."
        )
    return bytes(data)


def normalise_weights(weights: dict[int, float], hotkey: str) -> dict[int, float]:
    """WEIGHTS scaled to sum to 1, zeros dropped; negative, non-finite or all-zero weights → ChainError."""
    bad = {uid: w for uid, w in weights.items() if not math.isfinite(w) or w < 0}
    if bad:
        raise ChainError(f"weights from {hotkey}: uids {sorted(bad)} have negative or non-finite weights {bad}; "
                         "weights must be finite and ≥ 0.")
    total = math.fsum(weights.values())
    if total <= 0:
        raise ChainError(f"weights from {hotkey} are empty or all zero ({weights}); give at least one uid a positive weight.")
    return {int(uid): w / total for uid, w in sorted(weights.items()) if w > 0}


def require_uids(metagraph: Metagraph, weights: dict[int, float], hotkey: str) -> None:
    """ChainError naming the uids in WEIGHTS that the metagraph does not hold."""
    unknown = sorted(uid for uid in weights if metagraph.by_uid(uid) is None)
    if unknown:
        raise ChainError(
            f"weights from {hotkey} name uids {unknown} that are not registered on netuid {metagraph.netuid} "
            f"(registered uids: 0..{len(metagraph.neurons) - 1}). Re-read the metagraph and weight only its uids."
        )


def require_permit(metagraph: Metagraph, hotkey: str) -> Neuron:
    """The neuron of HOTKEY if it holds a validator permit; otherwise ChainError saying why not."""
    neuron = metagraph.by_hotkey(hotkey)
    if neuron is None:
        raise ChainError(not_registered(hotkey, metagraph.netuid))
    if not neuron.validator_permit:
        raise ChainError(
            f"hotkey {hotkey} (uid {neuron.uid}, stake {neuron.stake:g}) has no validator permit on netuid "
            f"{metagraph.netuid}, so it cannot set weights. Stake more to it (`moeforge chain stake` on a local "
            "chain, `btcli stake add` on Bittensor) or set weights from a validator's hotkey."
        )
    return neuron


def not_registered(hotkey: str, netuid: int) -> str:
    """The message for a hotkey that is not registered on NETUID."""
    return (f"hotkey {hotkey} is not registered on netuid {netuid}. Register it first "
            "(`moeforge chain register` on a local chain, `btcli subnets register` on Bittensor).")
