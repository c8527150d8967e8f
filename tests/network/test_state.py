import math

import pytest
import torch

from moeforge.chain.keys import keypair_from_uri
from moeforge.chain.local import LocalChain
from moeforge.errors import PayloadError
from moeforge.model.slices import extract_slice
from moeforge.network.commitment import ResultPayload, encode_result
from moeforge.network.history import RoundReport
from moeforge.network.state import RoundResults, base_state, fetch_state, pack_state, round_results, unpack_state
from moeforge.network.transport import pack, unpack
from moeforge.store.local import LocalStore
from tests.model.tiny import tiny_model
from tests.network.conftest import make_job

V = [keypair_from_uri(f"//moeforge/validator/{i}") for i in range(3)]
SHA = {name: c * 64 for name, c in (("a", "a"), ("b", "b"), ("c", "c"))}


def _results(stakes: dict[str, float], states: dict[str, str]) -> RoundResults:
    return RoundResults(0, {h: ResultPayload(0, states[h], "0" * 64) for h in states}, stakes)


def test_the_winner_is_the_state_with_the_most_stake_summed_over_its_backers():
    won = _results({"v1": 60, "v2": 50, "v3": 20}, {"v1": SHA["a"], "v2": SHA["b"], "v3": SHA["b"]}).winner()
    assert won == (SHA["b"], {"v2": 50, "v3": 20})


def test_equal_stake_goes_to_the_lower_digest_and_no_results_to_none():
    assert _results({"v1": 50, "v2": 50}, {"v1": SHA["b"], "v2": SHA["a"]}).winner()[0] == SHA["a"]
    assert _results({}, {}).winner() is None


@pytest.fixture
def experts():
    model = tiny_model("deepseek_v2")
    job = make_job()
    return job, extract_slice(model, job.slots, job.base_fingerprint)


def test_a_state_round_trips_and_is_known_by_its_content_whoever_signed_it(experts):
    job, current = experts
    data_0, sha_0 = pack_state(current, keypair=V[0], job_id=job.job_id, round=1)
    data_1, sha_1 = pack_state(current, keypair=V[1], job_id=job.job_id, round=1)
    assert data_0 != data_1 and sha_0 == sha_1
    back = unpack_state(data_1, job=job, reference=current, expect_sha256=sha_0)
    assert back.kind == "experts" and all(torch.equal(back.state_dict()[k], t) for k, t in current.state_dict().items())


def test_a_state_that_is_not_the_one_named_or_does_not_fit_the_job_is_refused(experts):
    job, current = experts
    data, sha = pack_state(current, keypair=V[0], job_id=job.job_id, round=1)
    with pytest.raises(PayloadError, match="not the one the chain names"):
        unpack_state(data, job=job, reference=current, expect_sha256="e" * 64)
    with pytest.raises(PayloadError, match="signed for job"):
        unpack_state(data, job=make_job(job_id="other-job"), reference=current, expect_sha256=sha)
    tensors = current.state_dict()
    tensors.pop(sorted(tensors)[0])
    short = pack(tensors, keypair=V[0], job=job.job_id, round=1, kind="state")
    with pytest.raises(PayloadError, match="does not fit the job's experts"):
        unpack_state(short, job=job, reference=current, expect_sha256=unpack(short)[0].payload_sha256)
    tensors = {k: t.clone() for k, t in current.state_dict().items()}
    next(iter(tensors.values())).view(-1)[3] = math.inf
    bad = pack(tensors, keypair=V[0], job=job.job_id, round=1, kind="state")
    with pytest.raises(PayloadError, match="non-finite"):
        unpack_state(bad, job=job, reference=current, expect_sha256=unpack(bad)[0].payload_sha256)


@pytest.fixture
def network(tmp_path, experts):
    job, current = experts
    chain = LocalChain(tmp_path / "chain.sqlite", block_seconds=0)
    for key, stake in zip(V, (100.0, 60.0, 0.0)):
        chain.register(key.ss58_address)
        if stake:
            chain.add_stake(key.ss58_address, stake)
    return chain, LocalStore(tmp_path / "store"), job, current


def _publish(chain, store, job, current, key, r, scale: float) -> str:
    state = extract_slice(tiny_model("deepseek_v2", seed=int(scale * 10)), job.slots, job.base_fingerprint)
    data, sha = pack_state(state, keypair=key, job_id=job.job_id, round=r)
    report = RoundReport(job_id=job.job_id, round=r, validator=key.ss58_address, seed_block=0, seed="0x00", base_sha256=sha,
                         state_sha256=sha, state_digest=store.put(data), choice="none", score_rows=1, merge_rows=1)
    chain.commit(key, encode_result(sha, store.put(report.model_dump_json().encode()), r))
    return sha


def test_the_base_of_a_round_is_the_initial_state_until_a_validator_publishes(network):
    chain, store, job, _ = network
    chain.step(job.schedule.round_end(1))
    ref = base_state(chain, store, job, 2)
    assert (ref.sha256, ref.digest, ref.round) == (job.initial_state_sha256, job.initial_state, -1)


def test_the_base_follows_stake_and_carries_over_a_round_without_results(network):
    chain, store, job, current = network
    chain.step(job.schedule.seed_block(0))
    mine = _publish(chain, store, job, current, V[0], 0, 1.0)
    _publish(chain, store, job, current, V[1], 0, 2.0)
    _publish(chain, store, job, current, V[2], 0, 3.0)  # no stake, no permit: not counted
    chain.step(job.schedule.round_end(1) - chain.block())
    assert set(round_results(chain, job, 0).results) == {V[0].ss58_address, V[1].ss58_address}
    for r in (1, 2):  # round 1 had no results: round 0's winner carries over
        ref = base_state(chain, store, job, r)
        assert ref.sha256 == mine and ref.round == 0 and ref.backers == {V[0].ss58_address: 100.0}
    assert fetch_state(store, ref, job=job, reference=current).kind == "experts"


def test_a_result_posted_after_the_round_ended_does_not_count_for_the_next_base(network):
    chain, store, job, current = network
    chain.step(job.schedule.round_end(0) + 1)
    _publish(chain, store, job, current, V[0], 0, 1.0)
    chain.step(3)
    assert base_state(chain, store, job, 1).round == -1
