"""A partitioned job end to end in one process: each miner trains and submits only its part, validators merge part by part."""

from moeforge.model.slices import extract_slice
from moeforge.model.load import load_model
from moeforge.network.state import StateRef, fetch_state
from moeforge.network.transport import unpack
from moeforge.store.local import LocalStore
from tests.network.conftest import SALT


def test_a_round_of_a_two_part_job_trains_merges_and_credits_by_part(tmp_path, job_request, job_records):
    from harness.inprocess import InProcessNetwork

    request = job_request.model_copy(update={"rounds": 1, "parts": 2})
    net = InProcessNetwork.create(tmp_path, LocalStore(tmp_path / "store"), request, job_records, SALT,
                                  miner_modes=["full", "offload", "full", "offload"], validator_stakes=[100.0])
    job = net.publish()
    assert job.parts == 2
    net.advance_to(job.schedule.round_start(0))
    prepared = [miner.prepare(0) for miner in net.miners]
    for miner, p in zip(net.miners, prepared):
        _, tensors = unpack(p.data, expect_hotkey=miner.hotkey)
        slots = job.assigned_slots(0, miner.hotkey)
        assert len(slots) < len(job.slots)
        assert {k.rsplit(".", 2)[0] for k in tensors} == {f"model.layers.{s.layer}.mlp.experts.{s.expert}" for s in slots}
    assert all(miner.commit(p) for miner, p in zip(net.miners, prepared))
    net.advance_to(job.schedule.commit_deadline(0))
    for miner, p in zip(net.miners, prepared):
        miner.reveal(p)
    net.advance_to(job.schedule.seed_block(0))
    report = net.validators[0].score_round(0)
    rejected = [v for v in report.verdicts if not v.accepted]
    assert not [v for v in rejected if v.reject in ("wrong_keys", "wrong_shape", "malformed")], rejected
    assert report.choice in ("merged", "single") and report.accepted
    if report.choice == "merged":
        assert abs(sum(report.contributions.values()) - 1.0) < 1e-9
    model = load_model(job.base_model)
    reference = extract_slice(model, job.slots, job.base_fingerprint)
    state = fetch_state(net.store, StateRef(report.state_sha256, report.state_digest, 0), job=job, reference=reference)
    moved = {s for s in job.slots if any(not getattr(state.weights[s], f).equal(getattr(reference.weights[s], f))
                                            for f in ("gate", "up", "down"))}
    parts_of_cohort = {job.part_of(0, h) for h in report.accepted}
    assert moved == {s for p in parts_of_cohort for s in job.part_slots(p)}  # exactly the merged parts' experts moved
