"""The production chain: one subnet on a Bittensor network, through the bittensor 11 SDK.

DESIGN.md "The network". Reads go through the SDK's typed reads (`subnets.metagraph`,
`read("commitment")`, `subnets.commitments`, `read("weights")`), pinned to a block with `at(block)`;
writes through `submit_call(Commitments.set_commitment)` and the `SetWeights` intent, which picks
`set_mechanism_weights` or a drand-timelocked `commit_timelocked_mechanism_weights` from the
subnet's `CommitRevealWeightsEnabled` (the chain reveals timelocked weights itself). The SDK talks
to the node through one object, its `Substrate` (an `RpcSubstrate` over a websocket by default);
tests pass their own `substrate=` and nothing else changes. SDK errors become `ChainError`s that
name the network, netuid and hotkey, and say what to do; a node that cannot be reached right now
(`RpcConnectionError`, `ConnectionNotReady`, a dropped websocket, an OS error, a timeout, or an SDK
`ChainError` caused by one of these) becomes `ChainUnavailable`, which `chain.retry` retries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moeforge.chain.keys import DEFAULT_WALLET_PATH, load_wallet
from moeforge.chain.protocol import (
    Commitment,
    Metagraph,
    Neuron,
    check_commitment,
    normalise_weights,
    not_registered,
    require_permit,
    require_uids,
)
from moeforge.errors import ChainError, ChainUnavailable, ConfigError

if TYPE_CHECKING:
    from bittensor.sp_core import Keypair

log = logging.getLogger(__name__)


class BittensorChain:
    """`protocol.Chain` over subnet NETUID of a Bittensor network (`finney`, `test`, `local` or a ws:// URL)."""

    def __init__(
        self,
        network: str,
        netuid: int,
        *,
        wallet: str | None = None,
        hotkey: str = "default",
        wallet_path: str | Path = DEFAULT_WALLET_PATH,
        wait_for_finalization: bool = False,
        substrate: Any = None,
    ) -> None:
        """`wallet`/`hotkey`/`wallet_path` name this process's own identity (see `wallet_hotkey`).

        `substrate` replaces the SDK's websocket backend (`bittensor.RpcSubstrate`); tests pass a double.
        Writes wait for inclusion, and for finality when `wait_for_finalization`.
        """
        import bittensor

        self.network = network
        self.netuid = int(netuid)
        self.wallet_name, self.hotkey_name, self.wallet_path = wallet, hotkey, Path(wallet_path)
        self._finalize = wait_for_finalization
        try:
            self._client = bittensor.Subtensor(network, substrate=substrate)
        except ValueError as exc:
            raise ConfigError(f"bittensor network {network!r}: {exc}") from exc
        self._sdk_errors = (bittensor.BittensorError, TimeoutError, OSError, *_websocket_errors())

    def __repr__(self) -> str:
        return f"BittensorChain(network={self.network!r}, netuid={self.netuid})"

    def close(self) -> None:
        """Close the connection now (otherwise it closes when the object is collected)."""
        self._client.close()

    def wallet_hotkey(self) -> Keypair:
        """The hotkey keypair of the wallet this chain was opened with (`...&wallet=NAME&hotkey=HOT`)."""
        if not self.wallet_name:
            raise ConfigError(f"{self!r} was opened without a wallet; add `wallet=NAME&hotkey=HOT` to the chain URL.")
        return load_wallet(self.wallet_name, self.hotkey_name, self.wallet_path).hotkey

    # --- the Chain protocol -------------------------------------------------------------------

    def block(self) -> int:
        with self._errors("reading the current block"):
            return int(self._client.block)

    def block_hash(self, block: int) -> str:
        head = self.block()
        if block < 0 or block > head:
            raise ChainError(f"block {block} has no hash yet: {self._where()} is at block {head}. "
                             "Wait for the block (protocol.wait_for_block) before reading its hash.")
        with self._errors(f"reading the hash of block {block}"):
            info = self._client.block_info(block)
        if info is None or not info.hash:
            raise ChainError(f"{self._where()} has no block {block} (pruned by this node?). "
                             "Use an archive endpoint (bittensor://wss://…archive…).")
        return str(info.hash)

    def metagraph(self) -> Metagraph:
        with self._errors("reading the metagraph"):
            graph = self._client.subnets.metagraph(self.netuid, commitments=False)
        if graph is None:
            raise ChainError(f"netuid {self.netuid} does not exist on {self.network!r}. "
                             "Check the netuid (`btcli subnets list`) and the network.")
        neurons = tuple(
            Neuron(n.uid, n.hotkey, n.coldkey, float(n.total_stake.amount), bool(n.validator_permit))
            for n in graph.neurons
        )
        return Metagraph(self.netuid, int(graph.block), neurons)

    def commit(self, keypair: Keypair, data: bytes) -> int:
        import bittensor

        hotkey = keypair.ss58_address
        data = check_commitment(hotkey, data)
        self._require_registered(hotkey)
        call = bittensor.calls.Commitments.set_commitment(netuid=self.netuid, info=commitment_info(data))
        with self._errors("setting a commitment", hotkey):
            result = self._client.submit_call(call, keypair, signer="hotkey", wait_for_inclusion=True,
                                              wait_for_finalization=self._finalize)
        self._raise_for(result, "setting a commitment", hotkey)
        block = _landed_block(result)
        if block is None:  # no extrinsic id from this node: the chain's record says where it landed
            landed = self.commitment(hotkey)
            block = landed.block if landed else self.block()
        log.debug("commitment from %s: %d bytes in block %d", hotkey, len(data), block)
        return block

    def commitment(self, hotkey: str, *, at_block: int | None = None) -> Commitment | None:
        with self._errors("reading a commitment", hotkey):
            view = self._client if at_block is None else self._client.at(self._past(at_block))
            record = view.read("commitment", netuid=self.netuid, hotkey_ss58=hotkey)
        if record is None or not _has_raw(record.fields):
            return None
        return Commitment(hotkey, int(record.block), field_bytes(record.fields))

    def commitments(self, *, at_block: int | None = None) -> dict[str, Commitment]:
        block = None if at_block is None else self._past(at_block)
        with self._errors("reading commitments"):
            records = self._client.subnets.commitments(self.netuid, block)
        return {
            hotkey: Commitment(hotkey, int(c.block), field_bytes(c.fields))
            for hotkey, c in sorted(records.items())
            if _has_raw(c.fields)  # timelocked and revealed-only entries carry no plain bytes
        }

    def set_weights(self, keypair: Keypair, weights: dict[int, float]) -> None:
        import bittensor

        hotkey = keypair.ss58_address
        vector = normalise_weights(weights, hotkey)
        graph = self.metagraph()
        require_permit(graph, hotkey)  # the chain checks too; this names the hotkey and the stake
        require_uids(graph, vector, hotkey)
        intent = bittensor.SetWeights(netuid=self.netuid, weights=vector)
        with self._errors("setting weights", hotkey):
            result = self._client.execute(intent, keypair, wait_for_inclusion=True,
                                          wait_for_finalization=self._finalize)
        self._raise_for(result, "setting weights", hotkey)
        reveal = result.data.get("reveal_round")
        log.info("weights from %s over %d uids %s", hotkey, len(vector),
                 f"committed, revealed by the chain at drand round {reveal}" if reveal else "set")

    def weights(self) -> dict[int, dict[int, float]]:
        with self._errors("reading weights"):
            rows = self._client.read("weights", netuid=self.netuid)
        return {int(uid): {int(t): float(w) for t, w in row.items()} for uid, row in rows.items() if row}

    def idle(self, hotkey: str, until: int | None) -> int:
        """A real chain keeps its own time: nothing to tell it; → the head."""
        return self.block()

    # --- internals ---------------------------------------------------------------------------

    def _where(self) -> str:
        return f"bittensor network {self.network!r} (netuid {self.netuid})"

    def _past(self, block: int) -> int:
        """BLOCK if it exists; a block past the head → ChainError (a node would silently read the head)."""
        head = self.block()
        if block > head:
            raise ChainError(f"cannot read state as of block {block}: {self._where()} is at block {head}. "
                             "Wait for the block first (protocol.wait_for_block).")
        return block

    def _require_registered(self, hotkey: str) -> None:
        import bittensor

        with self._errors("looking up a uid", hotkey):
            uid = self._client.query(bittensor.storage.SubtensorModule.Uids, [self.netuid, hotkey])
        if uid is None:
            raise ChainError(not_registered(hotkey, self.netuid) + f" (network {self.network!r})")

    def _raise_for(self, result: Any, action: str, hotkey: str) -> None:
        if result.success:
            return
        error = result.error
        hint = f" ({error.name}) {error.remediation}." if error is not None and error.name else ""
        raise ChainError(f"{action} from {hotkey} on {self._where()} was rejected: {result.message}.{hint}")

    @contextmanager
    def _errors(self, action: str, hotkey: str | None = None) -> Iterator[None]:
        """Turn the SDK's errors into one ChainError: what failed, where, and what to do."""
        try:
            yield
        except ChainError:
            raise
        except self._sdk_errors as exc:
            who = f" from {hotkey}" if hotkey else ""
            kind = ChainUnavailable if unreachable(exc) else ChainError
            raise kind(f"{action}{who} on {self._where()} failed: {_describe(exc)}") from exc


def commitment_info(data: bytes) -> dict:
    """The `CommitmentInfo` for DATA: one `Raw{n}` field (n ≤ 128), the shape the Commitments pallet stores."""
    return {"fields": [{f"Raw{len(data)}": data}]}


def field_bytes(fields: list) -> bytes:
    """The bytes of a commitment's `Raw*` fields, concatenated (the node hands them over as 0x-hex)."""
    out = b""
    for entry in fields:
        items = entry.items() if isinstance(entry, dict) else ()
        for variant, value in items:
            if variant.startswith("Raw"):
                out += _as_bytes(value)
    return out


def _has_raw(fields: list) -> bool:
    return any(isinstance(e, dict) and any(str(k).startswith("Raw") for k in e) for e in fields or [])


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value.removeprefix("0x"))
    if isinstance(value, (list, tuple)):
        return bytes(int(b) for b in value)
    return bytes(value)


def _landed_block(result: Any) -> int | None:
    """The block number from an extrinsic id such as `4123456-0007`, if the node gave one."""
    head, _, _ = (result.extrinsic_id or "").partition("-")
    return int(head) if head.isdigit() else None


def unreachable(exc: BaseException) -> bool:
    """Whether EXC (or what caused it) means the node cannot be reached right now, so a retry may succeed."""
    import bittensor

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, bittensor.RpcPolicyError):  # the endpoint refuses us: only "busy" passes
            if exc.retry_after or exc.status_code in (429, 502, 503, 504):
                return True
        elif isinstance(exc, (bittensor.RpcConnectionError, bittensor.ConnectionNotReady, TimeoutError, OSError,
                              *_websocket_errors())):
            return True
        exc = exc.__cause__  # an explicit `raise … from`, as the SDK wraps transport errors
    return False


def _websocket_errors() -> tuple[type[Exception], ...]:
    """The websocket library's dropped-connection errors (the SDK's transport), if it is installed."""
    try:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake
    except ImportError:
        return ()
    return (ConnectionClosed, InvalidHandshake)


def _describe(exc: Exception) -> str:
    """The SDK's message plus its remediation hint, or what to check for a connection failure."""
    import bittensor

    if unreachable(exc):
        return (f"cannot reach the node ({exc}). Check the network name or ws:// endpoint in the chain URL "
                "and your connection, or use a local chain (MOEFORGE_CHAIN=local:///path/chain.sqlite).")
    if isinstance(exc, bittensor.ChainError):
        return f"{exc.message} ({exc.name or exc.code.value}). {exc.remediation}."
    return f"{exc}."
