"""Chain fixtures: dev keypairs, a manual-clock local chain, and a Bittensor node double.

`FakeSubstrate` stands in for the one object through which the bittensor SDK reaches a node: its
`Substrate` protocol (`bittensor.RpcSubstrate` in production, `Client(substrate=...)` to inject).
Everything above it, the SDK's reads, intents, executor and signing, runs for real. The double keeps
a node's state per block, answers the storage items, maps and runtime calls the SDK asks for in the
decoded shapes the transport returns, and applies the calls it is sent: each write lands in a new block.
It can also drop the connection: `unreachable_for = n` fails the next n calls as an unreachable node
does, and `lose_next_answer` lets the next submit land but loses its answer with the connection.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bittensor as bt
import pytest

from moeforge.chain.bittensor import BittensorChain
from moeforge.chain.keys import keypair_from_uri
from moeforge.chain.local import LocalChain
from moeforge.chain.protocol import Chain
from moeforge.chain.retry import RetryingChain, RetryingLocalChain
from moeforge.retry import RetryPolicy

NETUID = 7
RAO_PER_TAO = 10**9
U16_MAX = 65535
MAX_VALIDATORS = 64


@dataclass(frozen=True)
class ComposedCall:
    """What `Substrate.compose` returns: the pallet, the function and the params the SDK built."""

    module: str
    function: str
    params: dict


@dataclass(frozen=True)
class Submitted:
    call: ComposedCall
    signer: str  # ss58 of the key that signed
    block: int  # the block it landed in


@dataclass
class _State:
    neurons: list[dict] = field(default_factory=list)  # uid = index: {hotkey, coldkey, stake_rao}
    commitments: dict[str, dict] = field(default_factory=dict)  # hotkey → CommitmentOf record
    weights: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # uid → [(uid, u16)]
    last_update: dict[int, int] = field(default_factory=dict)
    timelocked: list[tuple[str, int, bytes, int]] = field(default_factory=list)  # hotkey, block, commit, round
    commit_reveal: bool = False

    def uid(self, hotkey: str) -> int | None:
        return next((uid for uid, n in enumerate(self.neurons) if n["hotkey"] == hotkey), None)

    def permits(self) -> list[bool]:
        ranked = sorted((uid for uid, n in enumerate(self.neurons) if n["stake_rao"] > 0),
                        key=lambda uid: (-self.neurons[uid]["stake_rao"], uid))
        chosen = set(ranked[:MAX_VALIDATORS])
        return [uid in chosen for uid in range(len(self.neurons))]


class FakeSubstrate:
    """A subtensor node's state and calls, behind the SDK's `Substrate` seam."""

    def __init__(self, netuid: int = NETUID, *, first_block: int = 1000, commit_reveal: bool = False) -> None:
        self.netuid = netuid
        self.token_symbols: dict[int, str] = {}
        self.reads: list[tuple[str, str, Any, int]] = []  # (pallet or api, item or method, params, block)
        self.submitted: list[Submitted] = []
        self.reject_next: tuple[str, str] | None = None  # (error name, message) for the next submit
        self.down = False  # connect() fails, as with an unreachable endpoint
        self.weights_rate_limit = 0  # blocks between two weight settings by one validator
        self.extrinsic_ids = True  # some nodes report inclusion without the block-index id
        self.unreachable_for = 0  # the next N calls fail as when the websocket drops (RpcConnectionError)
        self.lose_next_answer = False  # the next submit lands, then the connection drops before the answer
        self._states: dict[int, _State] = {first_block: _State(commit_reveal=commit_reveal)}
        self._head = first_block

    # --- test admin: what a subnet owner and stakers would do on a real network -----------------

    def register(self, hotkey: str, coldkey: str | None = None) -> int:
        state = self._new_block()
        uid = state.uid(hotkey)
        if uid is None:
            state.neurons.append({"hotkey": hotkey, "coldkey": coldkey or hotkey, "stake_rao": 0})
            uid = len(state.neurons) - 1
        return uid

    def add_stake(self, hotkey: str, tao: float) -> None:
        state = self._new_block()
        state.neurons[state.uid(hotkey)]["stake_rao"] += round(tao * RAO_PER_TAO)

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self._new_block()

    def set_commit_reveal(self, enabled: bool) -> None:
        self._new_block().commit_reveal = enabled

    def state(self, block: int | None = None) -> _State:
        return self._states[self._head if block is None else block]

    @staticmethod
    def hash_of(block: int) -> str:
        return "0x" + hashlib.sha256(f"fake-subtensor-{block}".encode()).hexdigest()

    # --- the Substrate protocol, as far as the SDK uses it here --------------------------------

    def balance(self, rao: int, netuid: int = 0) -> bt.Balance:
        return bt.Balance(int(rao), netuid, self.token_symbols.get(netuid))

    async def connect(self) -> None:
        if self.down:
            raise bt.RpcConnectionError("[Errno 111] Connection refused")

    async def close(self) -> None:
        pass

    async def block_hash(self, block: int | None = None) -> str | None:
        self._reach()
        block = self._head if block is None else block
        return self.hash_of(block) if block in self._states else None  # a node answers null for unknown blocks

    async def block_number(self) -> int:
        self._reach()
        return self._head

    async def finalized_block_number(self) -> int:
        return self._head

    async def block_time(self) -> float:
        return 12.0

    async def constant(self, module: str, name: str) -> Any:
        if (module, name) == ("Aura", "SlotDuration"):
            return 12_000
        raise AssertionError(f"unexpected constant {module}.{name}")

    async def get_block(self, block_number: int | None = None, block_hash: str | None = None) -> dict | None:
        self._reach()
        number = self._block_of(block_hash) if block_hash else (self._head if block_number is None else block_number)
        if number not in self._states:
            return None
        stamp = {"call": {"call_module": "Timestamp", "call_function": "set",
                          "call_args": [{"name": "now", "value": 1_700_000_000_000 + 12_000 * number}]}}
        return {"header": {"number": number, "hash": self.hash_of(number), "parentHash": self.hash_of(number - 1)},
                "extrinsics": [stamp]}

    async def query(self, module: str, storage_function: str, params: list | None = None,
                    block_hash: str | None = None) -> Any:
        self._reach()
        block = self._block_of(block_hash)
        self.reads.append((module, storage_function, params, block))
        return self._storage(self._states[block], module, storage_function, list(params or []))

    async def query_map(self, module: str, storage_function: str, params: list | None = None,
                        block_hash: str | None = None) -> list[tuple[Any, Any]]:
        self._reach()
        block = self._block_of(block_hash)
        self.reads.append((module, storage_function, params, block))
        return self._storage_map(self._states[block], module, storage_function, list(params or []))

    async def runtime_call(self, api: str, method: str, params: list, block_hash: str | None = None) -> Any:
        self._reach()
        block = self._block_of(block_hash)
        self.reads.append((api, method, params, block))
        if (api, method) != ("SubnetInfoRuntimeApi", "get_metagraph"):
            raise AssertionError(f"unexpected runtime call {api}.{method}")
        return self._metagraph(self._states[block], block) if params == [self.netuid] else None

    async def compose(self, call) -> ComposedCall:
        module, function, params = call
        return ComposedCall(module, function, dict(params))

    async def estimate_fee(self, call, keypair) -> bt.Balance:
        return bt.Balance.from_rao(100_000)

    async def submit(self, call: ComposedCall, keypair, *, nonce=None, period=None,
                     wait_for_inclusion: bool = True, wait_for_finalization: bool = True) -> bt.ExtrinsicResult:
        self._reach()
        state = self._new_block()
        block = self._head
        self.submitted.append(Submitted(call, keypair.ss58_address, block))
        error = self.reject_next or self._apply(state, block, call, keypair.ss58_address)
        self.reject_next = None
        if self.lose_next_answer:  # as `RpcSubstrate` reports a websocket lost between sending and inclusion
            self.lose_next_answer = False
            try:
                raise ConnectionResetError(104, "Connection reset by peer")
            except ConnectionResetError as lost:
                raise bt.ChainError(str(lost)) from lost
        if error is not None:
            name, message = error
            return bt.ExtrinsicResult(success=False, message=message, block_hash=self.hash_of(block),
                                      error=bt.ChainError(message, name))
        return bt.ExtrinsicResult(success=True, message="Success", block_hash=self.hash_of(block),
                                  extrinsic_id=f"{block}-0002" if self.extrinsic_ids else None)

    # --- the node's side ------------------------------------------------------------------------

    def _reach(self) -> None:
        if self.unreachable_for > 0:
            self.unreachable_for -= 1
            raise bt.RpcConnectionError("[Errno 111] Connection refused")

    def _new_block(self) -> _State:
        state = copy.deepcopy(self._states[self._head])
        self._head += 1
        self._states[self._head] = state
        return state

    def _block_of(self, block_hash: str | None) -> int:
        if block_hash is None:
            return self._head
        found = next((b for b in self._states if self.hash_of(b) == block_hash), None)
        if found is None:
            raise bt.ChainError(f"unknown block hash {block_hash}")
        return found

    def _storage(self, s: _State, module: str, item: str, params: list) -> Any:
        netuid_items = {
            "CommitRevealWeightsEnabled": s.commit_reveal, "WeightsSetRateLimit": self.weights_rate_limit,
            "MinAllowedWeights": 0, "MaxWeightsLimit": U16_MAX, "SubnetEpochConsensus": "Yuma",
            "ValidatorPermit": s.permits(),
            "LastUpdate": [s.last_update.get(uid, 0) for uid in range(len(s.neurons))],
            "Tempo": 360, "RevealPeriodEpochs": 1, "LastEpochBlock": 0, "PendingEpochAt": 0,
            "SubnetEpochIndex": 0, "BlocksSinceLastStep": 5,
        }
        if module == "SubtensorModule" and item == "Uids":
            return s.uid(params[1]) if params[0] == self.netuid else None
        if module == "SubtensorModule" and item in netuid_items:
            assert params == [self.netuid], f"{item} asked for {params}"
            return netuid_items[item]
        if (module, item) == ("Commitments", "CommitmentOf"):
            return s.commitments.get(params[1]) if params[0] == self.netuid else None
        raise AssertionError(f"unexpected storage read {module}.{item}{params}")

    def _storage_map(self, s: _State, module: str, item: str, params: list) -> list[tuple[Any, Any]]:
        if (module, item) == ("SubtensorModule", "TokenSymbol"):
            return []
        assert params == [self.netuid], f"{module}.{item} asked for {params}"
        if (module, item) == ("Commitments", "CommitmentOf"):
            return list(s.commitments.items())
        if (module, item) == ("Commitments", "RevealedCommitments"):
            return []
        if (module, item) == ("SubtensorModule", "Weights"):
            return sorted(s.weights.items())
        if (module, item) == ("SubtensorModule", "Uids"):
            return [(n["hotkey"], uid) for uid, n in enumerate(s.neurons)]
        raise AssertionError(f"unexpected storage map {module}.{item}{params}")

    def _metagraph(self, s: _State, block: int) -> dict:
        """`SubnetInfoRuntimeApi.get_metagraph`, decoded: one column per field, indexed by uid."""
        n = len(s.neurons)
        return {
            "netuid": self.netuid, "name": list(b"moeforge"), "symbol": list("α".encode()), "block": block,
            "tempo": 360, "last_step": block - 5, "blocks_since_last_step": 5,
            "owner_hotkey": s.neurons[0]["hotkey"] if s.neurons else "", "owner_coldkey": "",
            "network_registered_at": 1, "num_uids": n, "max_uids": 256,
            "hotkeys": [x["hotkey"] for x in s.neurons], "coldkeys": [x["coldkey"] for x in s.neurons],
            "active": [True] * n, "validator_permit": s.permits(),
            "total_stake": [x["stake_rao"] for x in s.neurons], "alpha_stake": [x["stake_rao"] for x in s.neurons],
            "tao_stake": [0] * n, "emission": [0] * n, "last_update": [s.last_update.get(u, 0) for u in range(n)],
            "block_at_registration": [1] * n, "axons": [{"ip": 0, "port": 0, "ip_type": 4}] * n,
        }

    def _apply(self, s: _State, block: int, call: ComposedCall, signer: str) -> tuple[str, str] | None:
        """Run CALL against state S as the pallet would; an error is (name, message)."""
        uid = s.uid(signer)
        if (call.module, call.function) == ("Commitments", "set_commitment"):
            assert call.params["netuid"] == self.netuid
            (entry,) = call.params["info"]["fields"]
            ((variant, raw),) = entry.items()
            assert isinstance(raw, bytes) and variant == f"Raw{len(raw)}" and len(raw) <= 128, entry
            if uid is None:
                return "AccountNotAllowedCommit", "Account is not allowed to commit."
            s.commitments[signer] = {"deposit": 0, "block": block, "info": {"fields": [{variant: "0x" + raw.hex()}]}}
            return None
        if (call.module, call.function) == ("SubtensorModule", "set_mechanism_weights"):
            if uid is None:
                return "HotKeyNotRegisteredInSubNet", "The hotkey is not registered in the subnet."
            if not s.permits()[uid]:
                return "NeuronNoValidatorPermit", "The neuron has no validator permit."
            s.weights[uid] = list(zip(call.params["dests"], call.params["weights"]))
            s.last_update[uid] = block
            return None
        if (call.module, call.function) == ("SubtensorModule", "commit_timelocked_mechanism_weights"):
            s.timelocked.append((signer, block, call.params["commit"], call.params["reveal_round"]))
            return None
        raise AssertionError(f"unexpected call {call.module}.{call.function}")


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def alice():
    return keypair_from_uri("//Alice")


@pytest.fixture(scope="session")
def bob():
    return keypair_from_uri("//Bob")


@pytest.fixture(scope="session")
def carol():
    return keypair_from_uri("//Carol")


@pytest.fixture
def local_chain(tmp_path) -> LocalChain:
    return LocalChain(tmp_path / "chain.sqlite", block_seconds=0)


@pytest.fixture
def node(tmp_path, monkeypatch) -> FakeSubstrate:
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "token_symbols.json"))  # the SDK's disk cache
    return FakeSubstrate()


@pytest.fixture
def bittensor_chain(node) -> BittensorChain:
    chain = BittensorChain("finney", NETUID, substrate=node)
    yield chain
    chain.close()


@dataclass
class Harness:
    """A backend plus the admin moves a test needs, whatever the backend."""

    name: str
    chain: Chain
    register: Callable[[str], int]
    stake: Callable[[str, float], object]
    step: Callable[[int], object]


def never_sleep(seconds: float) -> None:
    raise AssertionError(f"a retry was started ({seconds:.2f} s wait) where the chain was reachable")


@pytest.fixture(params=["local", "local+retry", "bittensor", "bittensor+retry"])
def harness(request) -> Harness:
    """Every backend, bare and wrapped in the RetryingChain that `open_chain` returns by default."""
    backend, _, retry = request.param.partition("+")
    if backend == "local":
        chain = request.getfixturevalue("local_chain")
        if retry:
            chain = RetryingLocalChain(chain, RetryPolicy(), sleep=never_sleep)
        return Harness(request.param, chain, chain.register, chain.add_stake, chain.step)
    node = request.getfixturevalue("node")
    chain = request.getfixturevalue("bittensor_chain")
    if retry:
        chain = RetryingChain(chain, RetryPolicy(), sleep=never_sleep)
    return Harness(request.param, chain, node.register, node.add_stake, node.step)
