"""The outer optimizer's arithmetic and its momentum's trip through the published state."""

import pytest
import torch

from moeforge.chain.keys import keypair_from_uri
from moeforge.errors import PayloadError
from moeforge.model.slices import extract_slice
from moeforge.network.outer import OuterOptimizer
from moeforge.network.transport import MOMENTUM_PREFIX, pack, unpack
from moeforge.network.state import pack_state, unpack_outer_state, unpack_state
from tests.model.tiny import tiny_model
from tests.network.conftest import make_job
from tests.network.test_scoring import _noise_delta

KEY = keypair_from_uri("//moeforge/validator/0")


@pytest.fixture
def experts():
    model = tiny_model("deepseek_v2")
    job = make_job(outer_lr=0.7, outer_momentum=0.9)
    return job, extract_slice(model, job.slots, job.base_fingerprint)


def _tensors(piece):
    return {k: t.double() for k, t in piece.state_dict().items()}


def test_plain_averaging_takes_the_update_itself_and_keeps_no_momentum(experts):
    _, current = experts
    plain, update = OuterOptimizer(), _noise_delta(current, 0.01)
    assert plain.plain and plain.score_scale == 1.0
    assert plain.step(current, None, update) is update  # bit for bit the state plain averaging reached
    assert plain.free_step(current, None) is None and plain.next_momentum(current, None, update) is None


def test_nesterov_steps_follow_diloco_with_the_free_step_apart(experts):
    _, current = experts
    outer = OuterOptimizer(lr=0.7, momentum=0.9)
    m, d = _noise_delta(current, 0.01, seed=1), _noise_delta(current, 0.01, seed=2)
    tm, td = _tensors(m), _tensors(d)
    step = _tensors(outer.step(current, m, d, scale=0.5))
    free = _tensors(outer.free_step(current, m))
    after = _tensors(outer.next_momentum(current, m, d, scale=0.5))
    for k in tm:
        m_next = 0.9 * tm[k] + td[k]  # M' = μM + Δ, θ' − θ = lr(Δ + μM')
        torch.testing.assert_close(step[k], 0.5 * 0.7 * (td[k] + 0.9 * m_next), rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(free[k], 0.7 * 0.81 * tm[k], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(after[k], 0.5 * m_next, rtol=1e-5, atol=1e-9)
    assert outer.score_scale == pytest.approx(0.7 * 1.9)


def test_the_momentum_travels_with_the_state_and_changes_its_digest(experts):
    job, current = experts
    momentum = _noise_delta(current, 0.01, seed=5)
    data, sha = pack_state(current, keypair=KEY, job_id=job.job_id, round=2, momentum=momentum)
    _, bare_sha = pack_state(current, keypair=KEY, job_id=job.job_id, round=2)
    assert sha != bare_sha
    state, back = unpack_outer_state(data, job=job, reference=current, expect_sha256=sha)
    assert all(torch.equal(back.state_dict()[k], t) for k, t in momentum.state_dict().items())
    assert all(torch.equal(state.state_dict()[k], t) for k, t in current.state_dict().items())
    assert unpack_state(data, job=job, reference=current, expect_sha256=sha).kind == "experts"
    bare, _ = pack_state(current, keypair=KEY, job_id=job.job_id, round=2)
    assert unpack_outer_state(bare, job=job, reference=current, expect_sha256=bare_sha)[1] is None


def test_momentum_a_job_does_not_keep_or_that_does_not_fit_is_refused(experts):
    job, current = experts
    momentum = _noise_delta(current, 0.01, seed=5)
    data, sha = pack_state(current, keypair=KEY, job_id=job.job_id, round=2, momentum=momentum)
    plain_job = make_job(job_id=job.job_id)
    with pytest.raises(PayloadError, match="keeps none"):
        unpack_outer_state(data, job=plain_job, reference=current, expect_sha256=sha)
    half = {k: t for k, t in list(momentum.state_dict().items())[1:]}

    tensors = {**current.state_dict(), **{MOMENTUM_PREFIX + k: t for k, t in half.items()}}
    data = pack(tensors, keypair=KEY, job=job.job_id, round=2, kind="state")
    sha = unpack(data)[0].payload_sha256
    with pytest.raises(PayloadError, match="does not fit the job's experts"):
        unpack_outer_state(data, job=job, reference=current, expect_sha256=sha)


def test_a_delta_cannot_carry_momentum(experts):
    job, current = experts
    tensors = {MOMENTUM_PREFIX + k: t for k, t in _noise_delta(current, 0.01).state_dict().items()}
    with pytest.raises(PayloadError, match="outer momentum"):
        pack(tensors, keypair=KEY, job=job.job_id, round=2, kind="delta")


@pytest.mark.slow
def test_validators_with_momentum_agree_bit_for_bit_and_a_restarted_one_continues_exactly(tmp_path, job_request, job_records):
    from harness.inprocess import InProcessNetwork
    from moeforge.network.state import base_state, fetch_outer_state
    from moeforge.store.local import LocalStore
    from tests.network.conftest import SALT

    request = job_request.model_copy(update={"outer_lr": 0.8, "outer_momentum": 0.6, "rounds": 3, "job_id": "maths-momentum"})
    net = InProcessNetwork.create(tmp_path, LocalStore(tmp_path / "store"), request, job_records, SALT,
                                  miner_modes=["full", "full"], validator_stakes=[100.0, 100.0])
    job = net.publish()
    momenta = []
    for r in range(job.rounds):
        if r == 2:
            net.restart_validator(1)  # it must restore the momentum from the published state
        net.run_round(r)
        a, b = (net.reports[r][k.ss58_address] for k in net.validator_keys)
        assert a.state_sha256 == b.state_sha256
        ref = base_state(net.chain, net.store, job, r + 1)
        _, momentum = fetch_outer_state(net.store, ref, job=job, reference=net.validators[0].current)
        momenta.append(momentum)
        assert (momentum is None) == (a.choice == "none" and (r == 0 or momenta[r - 1] is None))
    restarted = net.validators[1].momentum  # what it restored from round 2's base state
    assert restarted is not None and momenta[1] is not None
    assert all(torch.equal(restarted.state_dict()[k], t) for k, t in momenta[1].state_dict().items())
