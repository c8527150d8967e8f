"""Tests for moeforge/chain/bittensor.py: the calls it builds, the responses it parses, the errors it maps.

The SDK runs for real down to its `Substrate` seam; `FakeSubstrate` (conftest.py) records what reaches
it. Not covered here, because it needs a live node: SCALE-encoding these calls against the runtime's
metadata, the websocket RPC, signing payloads with a real nonce/era, and the chain's own drand reveal.
"""

import bittensor as bt
import pytest

from moeforge.chain.bittensor import BittensorChain, commitment_info, field_bytes, unreachable
from moeforge.chain.keys import create_wallet
from moeforge.errors import ChainError, ChainUnavailable, ConfigError
from tests.chain.conftest import NETUID

# SubnetInfoRuntimeApi.get_metagraph as the SDK's transport decodes it: one column per field, by uid.
# Hand-written in that shape (no live node here); stakes are rao, alpha and total differ on purpose.
RECORDED_METAGRAPH = {
    "netuid": NETUID, "name": list(b"moeforge"), "symbol": list("ζ".encode()), "identity": None,
    "network_registered_at": 4_100_000, "owner_hotkey": "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
    "owner_coldkey": "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty",
    "block": 5_123_456, "tempo": 360, "last_step": 5_123_400, "blocks_since_last_step": 56,
    "num_uids": 3, "max_uids": 256, "tao_in": 10**12, "alpha_in": 2 * 10**12, "moving_price": {"bits": 2**31},
    "hotkeys": ["5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty",
                "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"],
    "coldkeys": ["5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"] * 3,
    "active": [True, True, False], "validator_permit": [True, False, False],
    "alpha_stake": [4_000 * 10**9, 0, 1], "tao_stake": [50 * 10**9, 0, 0], "total_stake": [4_100_500_000_000, 0, 1],
    "emission": [0, 12_345, 0], "rank": [0, 65535, 0], "trust": [0, 0, 0], "consensus": [0, 0, 0],
    "incentives": [0, 65535, 0], "dividends": [65535, 0, 0], "pruning_score": [0, 0, 0],
    "last_update": [5_123_300, 5_123_000, 0], "block_at_registration": [4_100_001, 4_200_000, 4_300_000],
    "axons": [{"ip": 2130706433, "port": 8091, "ip_type": 4}, {"ip": 0, "port": 0, "ip_type": 4}, {}],
    "identities": [None, None, None],
}


@pytest.fixture
def registered(node, alice, bob):
    """alice: uid 0, a validator; bob: uid 1, no stake."""
    node.register(alice.ss58_address)
    node.register(bob.ss58_address)
    node.add_stake(alice.ss58_address, 10.0)
    return node


def test_commit_sends_set_commitment_with_one_raw_field_signed_by_the_hotkey(bittensor_chain, registered, alice):
    landed = bittensor_chain.commit(alice, b"\x00digest\xff")
    (sent,) = registered.submitted
    assert (sent.call.module, sent.call.function) == ("Commitments", "set_commitment")
    assert sent.call.params == {"netuid": NETUID, "info": {"fields": [{"Raw8": b"\x00digest\xff"}]}}
    assert sent.signer == alice.ss58_address  # the hotkey signs, not the coldkey
    assert landed == sent.block


def test_commit_refuses_an_unregistered_hotkey_before_sending(bittensor_chain, registered, carol):
    with pytest.raises(ChainError, match=f"{carol.ss58_address} is not registered on netuid {NETUID}"):
        bittensor_chain.commit(carol, b"x")
    assert registered.submitted == []
    assert ("SubtensorModule", "Uids", [NETUID, carol.ss58_address]) in [r[:3] for r in registered.reads]


def test_landed_block_falls_back_to_the_chain_record(bittensor_chain, registered, alice):
    registered.extrinsic_ids = False
    landed = bittensor_chain.commit(alice, b"abc")
    assert landed == registered.submitted[-1].block


def test_commitment_reads_are_pinned_to_the_asked_block(bittensor_chain, registered, alice):
    first = bittensor_chain.commit(alice, b"one")
    registered.step(3)
    bittensor_chain.commit(alice, b"two")
    assert bittensor_chain.commitment(alice.ss58_address, at_block=first + 1).data == b"one"
    module, item, params, block = registered.reads[-1]
    assert (module, item, params, block) == ("Commitments", "CommitmentOf", [NETUID, alice.ss58_address], first + 1)


def test_commitment_fields_parse_to_bytes_and_sealed_ones_are_skipped(bittensor_chain, registered, alice, bob):
    state = registered.state()
    state.commitments[alice.ss58_address] = {"deposit": 0, "block": 1001,
                                             "info": {"fields": [{"Raw3": "0x616263"}, {"Raw2": "0xff00"}]}}
    state.commitments[bob.ss58_address] = {"deposit": 0, "block": 1002, "info": {"fields": [
        {"TimelockEncrypted": {"encrypted": "0x1234", "reveal_round": 99}}]}}
    assert bittensor_chain.commitment(alice.ss58_address).data == b"abc\xff\x00"
    assert bittensor_chain.commitment(bob.ss58_address) is None
    assert list(bittensor_chain.commitments()) == [alice.ss58_address]


def test_commitment_info_round_trips_through_the_node_shape():
    data = bytes(range(128))
    (entry,) = commitment_info(data)["fields"]
    assert entry == {"Raw128": data}
    assert field_bytes([{"Raw128": "0x" + data.hex()}]) == data
    assert field_bytes([{"Raw2": [1, 2]}, "None"]) == b"\x01\x02"


def test_metagraph_parses_the_runtime_response_into_our_types(bittensor_chain, node, monkeypatch):
    calls = []

    async def runtime_call(api, method, params, block_hash=None):
        calls.append((api, method, params))
        return RECORDED_METAGRAPH

    monkeypatch.setattr(node, "runtime_call", runtime_call)
    graph = bittensor_chain.metagraph()
    assert calls == [("SubnetInfoRuntimeApi", "get_metagraph", [NETUID])]
    assert (graph.netuid, graph.block) == (NETUID, 5_123_456)
    assert graph.hotkeys == tuple(RECORDED_METAGRAPH["hotkeys"])
    assert [n.uid for n in graph.neurons] == [0, 1, 2]
    assert [n.stake for n in graph.neurons] == [4100.5, 0.0, 1e-9]  # total stake, in alpha
    assert [n.validator_permit for n in graph.neurons] == [True, False, False]
    assert {n.coldkey for n in graph.neurons} == {"5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"}


def test_set_weights_sends_u16_weights_when_commit_reveal_is_off(bittensor_chain, registered, alice):
    bittensor_chain.set_weights(alice, {1: 3.0, 0: 1.0})
    (sent,) = registered.submitted
    assert (sent.call.module, sent.call.function) == ("SubtensorModule", "set_mechanism_weights")
    assert sent.call.params == {"netuid": NETUID, "mecid": 0, "dests": [0, 1], "weights": [21845, 65535],
                                "version_key": 0}
    assert sent.signer == alice.ss58_address


def test_set_weights_commits_timelocked_when_the_subnet_requires_commit_reveal(bittensor_chain, registered, alice):
    registered.set_commit_reveal(True)
    bittensor_chain.set_weights(alice, {0: 1.0, 1: 1.0})
    (sent,) = registered.submitted
    assert (sent.call.module, sent.call.function) == ("SubtensorModule", "commit_timelocked_mechanism_weights")
    params = sent.call.params
    assert (params["netuid"], params["mecid"], params["commit_reveal_version"]) == (NETUID, 0, 4)
    assert isinstance(params["commit"], bytes) and len(params["commit"]) > 64  # a TLE ciphertext, not the weights
    assert params["reveal_round"] > bt.timelock.current_round()  # opens in the future
    assert bittensor_chain.weights() == {}  # hidden until the chain reveals it


def test_a_rejected_extrinsic_names_the_error_hotkey_network_and_fix(bittensor_chain, registered, alice):
    registered.reject_next = ("CommitmentSetRateLimitExceeded", "Commitment set rate limit exceeded")
    with pytest.raises(ChainError) as caught:
        bittensor_chain.commit(alice, b"x")
    message = str(caught.value)
    for part in (f"setting a commitment from {alice.ss58_address}", "'finney'", f"netuid {NETUID}",
                 "CommitmentSetRateLimitExceeded", "wait for the rate-limit window"):
        assert part in message, (part, message)


def test_an_sdk_preflight_refusal_becomes_a_chain_error(bittensor_chain, registered, alice):
    bittensor_chain.set_weights(alice, {0: 1.0})
    registered.weights_rate_limit = 100
    with pytest.raises(ChainError, match=rf"setting weights from {alice.ss58_address} on .*rate limit is 100 blocks"):
        bittensor_chain.set_weights(alice, {0: 1.0})
    assert len(registered.submitted) == 1


def test_an_unreachable_node_says_what_to_check(bittensor_chain, node):
    node.down = True
    with pytest.raises(ChainUnavailable, match=r"reading the current block on bittensor network 'finney'.*cannot"):
        bittensor_chain.block()
    node.down = False
    assert bittensor_chain.block() == node._head  # the next call connects again


def test_a_dropped_connection_is_unavailable_and_the_next_call_works(bittensor_chain, registered, alice):
    registered.unreachable_for = 1
    with pytest.raises(ChainUnavailable, match=r"reading the metagraph on .*cannot reach the node \(\[Errno 111\]"):
        bittensor_chain.metagraph()
    assert bittensor_chain.metagraph().by_hotkey(alice.ss58_address).uid == 0


def test_a_submit_whose_answer_was_lost_is_unavailable(bittensor_chain, registered, alice):
    registered.lose_next_answer = True
    with pytest.raises(ChainUnavailable, match=rf"setting a commitment from {alice.ss58_address} .*Connection reset"):
        bittensor_chain.commit(alice, b"x")
    assert len(registered.submitted) == 1  # it did land: RetryingChain checks for that before sending again


def test_refusals_stay_permanent_chain_errors(bittensor_chain, registered, alice, carol):
    registered.reject_next = ("CommitmentSetRateLimitExceeded", "Commitment set rate limit exceeded")
    refusals = []
    for call in (lambda: bittensor_chain.commit(alice, b"x"), lambda: bittensor_chain.commit(carol, b"x"),
                 lambda: BittensorChain("finney", 99, substrate=registered).metagraph()):
        with pytest.raises(ChainError) as caught:
            call()
        refusals.append(caught.value)
    assert not any(isinstance(e, ChainUnavailable) for e in refusals), refusals


def _caused(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize("error, transient", [
    (bt.RpcConnectionError("could not connect to any endpoint"), True),
    (bt.ConnectionNotReady("Client connection is not open"), True),
    (TimeoutError("the connection timed out"), True),
    (ConnectionRefusedError(111, "Connection refused"), True),
    (_caused(bt.ChainError("connection lost"), ConnectionResetError(104, "reset")), True),  # lost mid-submit
    (bt.RpcPolicyError("slow down", status_code=429, retry_after="5"), True),
    (bt.RpcPolicyError("blocked", status_code=403), False),
    (bt.ChainError("Commitment set rate limit exceeded", "CommitmentSetRateLimitExceeded"), False),
    (bt.BittensorError("bad argument"), False),
])
def test_which_sdk_errors_mean_the_node_cannot_be_reached(error, transient):
    assert unreachable(error) is transient


def test_websocket_drops_are_unreachable():
    from websockets.exceptions import ConnectionClosedError
    from websockets.frames import Close

    assert unreachable(ConnectionClosedError(Close(1006, "abnormal"), None))


def test_a_missing_subnet_is_named(node):
    chain = BittensorChain("finney", 99, substrate=node)
    with pytest.raises(ChainError, match="netuid 99 does not exist on 'finney'"):
        chain.metagraph()


def test_an_unknown_network_is_a_config_error():
    with pytest.raises(ConfigError, match="nowhere"):
        BittensorChain("nowhere", 1)


def test_wallet_hotkey_loads_the_configured_wallet(tmp_path, node):
    wallet = create_wallet("validator", "hot", tmp_path)
    chain = BittensorChain("test", NETUID, wallet="validator", hotkey="hot", wallet_path=tmp_path, substrate=node)
    assert chain.wallet_hotkey().ss58_address == wallet.hotkey.ss58_address
    with pytest.raises(ConfigError, match="without a wallet"):
        BittensorChain("test", NETUID, substrate=node).wallet_hotkey()
