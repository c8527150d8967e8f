"""Issue 6's attack suite: honest and adversarial miners (and a dishonest validator) in one process.

One job of two rounds on the small testbed: two honest miners, one adversary per attack class of
`harness.adversary` (a sybil group of three), an honest validator (stake 100) and a
dishonest one (stake 50) that publishes a wrong merged state. A second, one-round job with a loose
norm bound shows the NaN-batch exploit is refused by the loss check when the norm bound lets it
through. Each test checks one attack class: refused with the expected reason in the round report,
the validator's events.jsonl and its metrics, never merged, never rewarded; honest miners still are.
"""

import re

import pytest
import torch

from moeforge.data.formatting import encode_records
from harness.adversary import ATTACKS, SHARD_EVIDENCE, DishonestValidator, adversaries, canary_path
from moeforge.network.checks import Reject
from harness.inprocess import InProcessNetwork
from moeforge.network.jobdata import split_job
from moeforge.network.observe import METRICS_FILE, read_events
from moeforge.network.state import base_state
from moeforge.store.local import LocalStore
from tests.network.conftest import SALT

pytestmark = pytest.mark.slow

ROUNDS = 2
MAIN = [name for name in ATTACKS if name not in ("nan_batches", *SHARD_EVIDENCE)] + ["nan_batches"]
EVIDENCE_ROUNDS = 3  # the free rider needs an adopted update to ride on
# The chain's block hashes, and so the score, merge and control rows validators draw from them, are fixed, so each run
# judges the same rows. Own-shard evidence is a test at 0.05: a delta with no own-shard mark passes it in about one
# round in twenty by chance, on some chain seeds; bench/attacks.py measures that rate over many seeds.
CHAIN_SEED = 0


def _network(tmp, job_request, records, names, *, stakes, honest=2, **job):
    request = job_request.model_copy(update={"job_id": "maths-attacks", "rounds": ROUNDS, "commit_blocks": 3, "reveal_blocks": 4, **job})
    net = InProcessNetwork.create(tmp, LocalStore(tmp / "store"), request, records, SALT, miner_modes=["full"] * honest,
                                  validator_stakes=stakes, chain_seed=CHAIN_SEED)
    net.publish()
    adversaries(net, names, victim=net.miners[0].hotkey)
    return net


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, job_request, job_records):
    net = _network(tmp_path_factory.mktemp("attacks"), job_request, job_records, MAIN, stakes=[100.0, 50.0])
    net.validators[1] = DishonestValidator(net.validators[1])
    for r in range(ROUNDS):
        net.run_round(r)
    return net, net.finish()


@pytest.fixture(scope="module")
def loose(tmp_path_factory, job_request, job_records):
    net = _network(tmp_path_factory.mktemp("loose"), job_request, job_records, ["nan_batches"], stakes=[100.0], rounds=1, norm_bound=1e40)
    net.run_round(0)
    return net


@pytest.fixture(scope="module")
def gauntlet(tmp_path_factory, job_request, job_records):
    """The attacks own-shard evidence answers, in a job that requires it at 0.05: four passes over quarter-size shards
    leave a mark on the small testbed's deltas that its honest miners show at p 0.0001–0.04 (one pass: 0.02–0.2)."""
    net = _network(tmp_path_factory.mktemp("gauntlet"), job_request, job_records, SHARD_EVIDENCE, stakes=[100.0], honest=3,
                   rounds=EVIDENCE_ROUNDS, shard_passes=4, evidence_significance=0.05)
    for r in range(EVIDENCE_ROUNDS):
        net.run_round(r)
    return net, net.finish()


def _honest_validator(net):
    return net.validators[0]


def _adversaries(net, name):
    return [m for m in net.miners if getattr(m, "attack", None) is not None and m.attack.name == name]


def _metric(net, verdict: str) -> float:
    text = (net.run_dir / "validator-0" / METRICS_FILE).read_text()
    m = re.search(rf'moeforge_validator_verdicts_total\{{verdict="{verdict}"\}} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def _weights(net) -> dict[str, float]:
    """hotkey → the largest weight any validator set on it."""
    uid = {n.hotkey: n.uid for n in net.chain.metagraph().neurons}
    out = {}
    for row in net.chain.weights().values():
        for hotkey, u in uid.items():
            out[hotkey] = max(out.get(hotkey, 0.0), row.get(u, 0.0))
    return out


def _assert_refused(net, record, hotkey, expect, rounds=range(ROUNDS)):
    """Refused with a reason in `expect` in the honest validator's report, events and metrics; never merged or paid."""
    validator = _honest_validator(net)
    events = [e for e in read_events(net.run_dir / "validator-0") if e["event"] == "scored"]
    judged = 0
    for r in rounds:
        report = net.reports[r][validator.hotkey]
        entry = next((v for v in report.verdicts if v.hotkey == hotkey), None)
        if entry is None:
            continue  # sat the round out (a replay in round 0)
        judged += 1
        assert entry.reject in expect and not entry.accepted, (r, entry)
        assert entry.detail
        assert hotkey not in report.accepted and hotkey not in report.contributions and hotkey not in report.errors
        assert next(e for e in events if e["round"] == r)["rejected"][hotkey] == entry.reject
        assert _metric(net, entry.reject) >= 1
        if record is not None and r < len(record.rounds):
            assert record.rounds[r].scores.get(hotkey, 0.0) == 0.0
    assert judged, f"{hotkey} was never judged"
    assert _weights(net).get(hotkey, 0.0) == 0.0
    if record is not None:
        assert hotkey not in record.contributions


def _assert_honest_paid(net, record):
    weights = _weights(net)
    for miner in net.miners[:2]:
        assert weights[miner.hotkey] > 0
        assert miner.hotkey in record.contributions
        assert all(miner.hotkey not in entry.rejections or entry.rejections[miner.hotkey].reason == Reject.NO_IMPROVEMENT
                   for entry in record.rounds)
    adversaries = {m.hotkey for m in net.miners[2:]}
    assert sum(weights[h] for h in adversaries if h in weights) == 0.0


SIMPLE = [n for n in MAIN if n not in ("sybil", "overfit", "nan_batches")]


@pytest.mark.parametrize("name", SIMPLE)
def test_each_attack_is_refused_with_its_reason_logged_counted_and_never_paid(attacked, name):
    net, record = attacked
    (adversary,) = _adversaries(net, name)
    _assert_refused(net, record, adversary.hotkey, ATTACKS[name].expect)


def test_honest_miners_are_still_merged_and_paid_and_no_adversary_is(attacked):
    net, record = attacked
    _assert_honest_paid(net, record)
    merged = {h for entry in record.rounds for h in entry.contributions}
    assert merged and merged <= {m.hotkey for m in net.miners[:2]}


def test_a_copy_with_noise_loses_and_the_original_keeps_its_reward(attacked):
    net, record = attacked
    victim = net.miners[0].hotkey
    (copier,) = _adversaries(net, "copy_noise")
    for r in range(ROUNDS):
        report = net.reports[r][_honest_validator(net).hotkey]
        assert report.copies[copier.hotkey] == victim
        assert next(v for v in report.verdicts if v.hotkey == victim).accepted
    assert _weights(net)[victim] > 0 and record.contributions[victim] > 0


def test_a_re_signed_replay_has_a_new_digest_and_is_caught_by_its_tensors(attacked):
    net, _ = attacked
    report = net.reports[1][_honest_validator(net).hotkey]
    (replayer,) = _adversaries(net, "replay")
    entry = next(v for v in report.verdicts if v.hotkey == replayer.hotkey)
    earlier = {v.digest for v in net.reports[0][_honest_validator(net).hotkey].verdicts if v.accepted}
    assert entry.digest not in earlier  # a digest check alone would miss it
    assert "content sha256" in entry.detail and report.replays[replayer.hotkey] == entry.detail
    (update,) = _adversaries(net, "replay_update")
    assert "adopted update" in report.replays[update.hotkey]


def test_a_sybil_group_gets_at_most_one_judged_submission(attacked):
    net, record = attacked
    group = {m.hotkey for m in _adversaries(net, "sybil")}
    assert len(group) == 3
    for r in range(ROUNDS):
        report = net.reports[r][_honest_validator(net).hotkey]
        verdicts = {v.hotkey: v for v in report.verdicts if v.hotkey in group}
        copies = {h for h, v in verdicts.items() if v.reject == Reject.COPY}
        assert len(copies) == 2 and set(report.copies[h] for h in copies) == group - copies
        assert not (copies & set(report.accepted))
        (judged,) = group - copies
        assert verdicts[judged].reject in (None, Reject.NO_IMPROVEMENT)  # judged on its merits ...
    assert all(_weights(net).get(h, 0.0) == 0.0 for h in group)  # ... which, for noise, are none


def test_pickled_payloads_are_refused_without_being_deserialised(attacked):
    net, _ = attacked
    for name in ("pickle", "torch_save"):
        (adversary,) = _adversaries(net, name)
        assert adversary.uploads
        for r in range(ROUNDS):
            assert not canary_path(adversary.hotkey, r).exists()


def test_the_nan_batch_exploit_is_refused_by_the_norm_bound_and_by_the_loss_check_when_the_bound_is_loose(attacked, loose):
    net, record = attacked
    (adversary,) = _adversaries(net, "nan_batches")
    _assert_refused(net, record, adversary.hotkey, {Reject.NORM_BOUND})
    (adversary,) = _adversaries(loose, "nan_batches")
    _assert_refused(loose, None, adversary.hotkey, {Reject.NON_FINITE_LOSS}, rounds=[0])
    entry = next(v for v in loose.reports[0][_honest_validator(loose).hotkey].verdicts if v.hotkey == adversary.hotkey)
    assert re.search(r"eval batch \d+ of \d+: loss (nan|inf)", entry.detail)
    assert all(v.accepted for v in loose.reports[0][_honest_validator(loose).hotkey].verdicts if v.hotkey in
               {m.hotkey for m in loose.miners[:2]})


def test_a_miner_overfitting_what_it_can_see_gains_no_unfair_score(attacked, job_records, small_testbed):
    net, record = attacked
    (overfitter,) = _adversaries(net, "overfit")
    honest = {m.hotkey for m in net.miners[:2]}
    for r in range(ROUNDS):
        verdicts = {v.hotkey: v for v in net.reports[r][_honest_validator(net).hotkey].verdicts}
        best_honest = max(verdicts[h].score or 0.0 for h in honest)
        assert (verdicts[overfitter.hotkey].score or 0.0) <= best_honest
    # what it trained on: everything in the store; no held-out row is there
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(small_testbed[1]))
    job = net.owner.job
    splits = split_job(job_records, SALT, validation=job.split.validation, heldout=job.split.heldout)
    objects = [net.store.get(d) for d in net.store.digests()]
    for rec, example in zip(splits.heldout, encode_records(splits.heldout, tokenizer)):
        needle = torch.tensor(example.input_ids, dtype=torch.int32).numpy().tobytes()
        assert not any(needle in blob for blob in objects)
        assert not any(rec.response.encode() in blob for blob in objects)


def test_a_dishonest_validator_is_out_voted_by_stake_and_flagged(attacked):
    net, record = attacked
    honest, dishonest = net.validators[0], net.validators[1]
    wrong = dishonest.published[0]
    assert net.reports[0][honest.hotkey].state_sha256 != wrong
    base = base_state(net.chain, net.store, net.owner.job, 1)
    assert base.sha256 == net.reports[0][honest.hotkey].state_sha256 and base.backers == {honest.hotkey: 100.0}
    report = net.reports[1][honest.hotkey]
    assert dishonest.hotkey in report.disagreements and wrong[:12] in report.disagreements[dishonest.hotkey]
    flagged = [e for e in read_events(net.run_dir / "validator-0") if e["event"] == "disagreement"]
    assert flagged and flagged[0]["validator"] == dishonest.hotkey
    metrics = (net.run_dir / "validator-0" / METRICS_FILE).read_text()
    assert f'moeforge_validator_disagreements_total{{validator="{dishonest.hotkey}"}} 1.0' in metrics
    assert record.rounds[0].dissent == [dishonest.hotkey] and record.rounds[0].state_sha256 != wrong



def _gauntlet_reports(net):
    return [net.reports[r][_honest_validator(net).hotkey] for r in range(EVIDENCE_ROUNDS)]


@pytest.mark.parametrize("name", ["free_rider", "diluted_copy", "same_block_copy"])
def test_reusing_public_or_leaked_work_is_refused_and_never_paid(gauntlet, name):
    net, record = gauntlet
    (adversary,) = _adversaries(net, name)
    _assert_refused(net, record, adversary.hotkey, ATTACKS[name].expect, rounds=range(EVIDENCE_ROUNDS))


def test_the_free_rider_gets_past_the_replay_check_and_is_refused_on_its_merits(gauntlet):
    net, _ = gauntlet
    (rider,) = _adversaries(net, "free_rider")
    reasons = [next((v.reject for v in report.verdicts if v.hotkey == rider.hotkey), None) for report in _gauntlet_reports(net)]
    assert reasons[0] is None  # nothing adopted yet to ride on
    assert reasons[1:] and all(r in (Reject.NO_EVIDENCE, Reject.NO_IMPROVEMENT) for r in reasons[1:]), reasons  # never REPLAY


def test_a_same_block_copy_with_a_lower_hash_is_the_copier_and_the_victim_keeps_its_credit(gauntlet):
    net, record = gauntlet
    (copier,) = _adversaries(net, "same_block_copy")
    victim = net.miners[0].hotkey
    for r, report in enumerate(_gauntlet_reports(net)):
        verdicts = {v.hotkey: v for v in report.verdicts}
        assert verdicts[copier.hotkey].commit_block == verdicts[victim].commit_block
        assert report.copies[copier.hotkey] == victim and "stronger own-shard evidence" in verdicts[copier.hotkey].detail
        assert verdicts[victim].reject != Reject.COPY  # judged on its merits, which a round may find short of significant
    assert record.contributions.get(victim, 0.0) > 0


def test_minimal_effort_is_paid_at_most_its_measured_marginal_contribution(gauntlet):
    net, record = gauntlet
    (lazy,) = _adversaries(net, "minimal_effort")
    honest = {m.hotkey for m in net.miners[:3]}
    for report in _gauntlet_reports(net):
        share = report.contributions.get(lazy.hotkey, 0.0)
        positive = {h: max(0.0, m) for h, m in report.marginal.items()}
        fair = positive.get(lazy.hotkey, 0.0) / sum(positive.values()) if sum(positive.values()) > 0 else 0.0
        assert share <= fair + 1e-12, (share, fair, report.marginal)
    assert sum(record.contributions.get(h, 0.0) for h in honest) > record.contributions.get(lazy.hotkey, 0.0)


def test_honest_miners_are_paid_in_a_job_that_requires_evidence(gauntlet):
    net, record = gauntlet

    weights = _weights(net)
    honest = [m.hotkey for m in net.miners[:3]]
    assert all(weights[h] > 0 for h in honest) and all(h in record.contributions for h in honest)
    # how often an honest miner's evidence falls short of 0.05 in a round is a statistical rate (the seed block hashes, and
    # so the samples, differ from run to run), not an invariant; what holds in every run is that each is paid
