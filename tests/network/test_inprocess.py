"""Whole rounds in one process: three miners (one quantized, one subset), a cheater, a copier, two validators
with different stake, on a manually stepped local chain and a folder store. One job, then several checks of it."""

import dataclasses
import math

import pytest
import torch

from moeforge.chain.keys import keypair_from_uri
from moeforge.data.formatting import encode_records
from moeforge.network.checks import Reject
from moeforge.network.history import RESULT_FILE, JobRecord
from harness.inprocess import InProcessNetwork
from moeforge.network.jobdata import split_job
from moeforge.network.miner import Miner, Prepared
from moeforge.network.observe import read_events
from moeforge.network.persist import read_model
from moeforge.network.role import RoleContext
from moeforge.network.state import base_state
from moeforge.network.transport import pack, unpack
from moeforge.network.validator import STATE_FILE, Validator, ValidatorState
from moeforge.store.local import LocalStore
from moeforge.store.protocol import sha256_hex
from tests.network.conftest import SALT

pytestmark = pytest.mark.slow

ROUNDS = 3
DISSENT_ROUND = 1  # validator 1 publishes the unchanged state, with more stake than validator 0 by then


class NanMiner(Miner):
    """Trains honestly, then submits its delta with one value set to NaN."""

    def prepare(self, r: int) -> Prepared:
        honest = super().prepare(r)
        _, tensors = unpack(honest.data)
        first = sorted(tensors)[0]
        tensors[first].view(-1)[0] = math.nan
        data = pack(tensors, keypair=self.keypair, job=self.job.job_id, round=r, kind="delta")
        return dataclasses.replace(honest, data=data, digest=sha256_hex(data))


class Recording(Miner):
    """An honest miner that keeps its last submission where a colluder can read it."""

    last: Prepared | None = None

    def prepare(self, r: int) -> Prepared:
        self.last = super().prepare(r)
        return self.last


class Copier(Miner):
    """Submits the victim's delta of the same round, signed with its own key, one block after the victim committed."""

    victim: Recording

    def prepare(self, r: int) -> Prepared:
        _, tensors = unpack(self.victim.last.data)
        data = pack(tensors, keypair=self.keypair, job=self.job.job_id, round=r, kind="delta")
        return dataclasses.replace(self.victim.last, data=data, digest=sha256_hex(data))

    def commit(self, prepared: Prepared) -> bool:
        self.chain.step(1)  # the manual clock: land after the honest commitments
        return super().commit(prepared)


class Dissenter(Validator):
    """In DISSENT_ROUND, publishes the round's base state whatever the miners sent."""

    def _publish(self, r, ref, judgement, timings):
        if r == DISSENT_ROUND:
            judgement = dataclasses.replace(judgement, state=self.current, decision=None, accepted=[])
        return super()._publish(r, ref, judgement, timings)


@pytest.fixture(scope="module")
def network(tmp_path_factory, job_request, job_records):
    """The job run to its end: (network, record, per-round base states, facts observed along the way)."""
    run = tmp_path_factory.mktemp("inprocess")
    net = InProcessNetwork.create(run, LocalStore(run / "store"), job_request, job_records, SALT,
                                  miner_modes=["full", "quantized", "subset"], validator_stakes=[100.0, 50.0])
    cheater_key, copier_key = keypair_from_uri("//moeforge/cheater"), keypair_from_uri("//moeforge/copier")
    for key in (cheater_key, copier_key):
        net.chain.register(key.ss58_address)
    job = net.publish()
    net.miners[0] = Recording(RoleContext(net.chain, net.store, net.miner_keys[0], run_dir=run / "miner-0"), job=job)
    net.miners.append(NanMiner(RoleContext(net.chain, net.store, cheater_key, run_dir=run / "cheater"), job=job))
    net.miners.append(Copier(RoleContext(net.chain, net.store, copier_key, run_dir=run / "copier"), job=job))
    net.miners[-1].victim = net.miners[0]
    net.validators[1] = Dissenter(RoleContext(net.chain, net.store, net.validator_keys[1], run_dir=run / "validator-1"), job=job,
                                  job_digest=net.job_digest, records=job_records, salt=SALT)
    facts = {"bases": {}}
    for r in range(ROUNDS):
        if r == DISSENT_ROUND:
            net.chain.add_stake(net.validator_keys[1].ss58_address, 100.0)  # now 150 against 100
        if r == ROUNDS - 1:
            facts["before_restart"] = net.validators[0].state
            facts["resumed_from"] = net.restart_validator(0).next_round
        net.run_round(r)
        net.advance_to(job.schedule.round_end(r))
        facts["bases"][r + 1] = base_state(net.chain, net.store, job, r + 1)
    record = net.finish()
    return net, record, facts


def test_the_published_state_lowers_the_held_out_loss_and_round_zero_merges_the_honest_miners(network):
    net, record, _ = network
    assert record.heldout_loss_after < record.heldout_loss_before
    report = net.reports[0][net.validator_keys[0].ss58_address]
    assert report.choice in ("merged", "single") and report.adopted_loss < report.merge_base_loss
    honest = {m.hotkey for m in net.miners[:3]}
    assert set(report.accepted) <= honest and report.accepted


def test_the_cheater_is_rejected_for_non_finite_values_every_round_and_named_in_the_history(network):
    net, record, _ = network
    cheater = net.miners[3].hotkey
    for entry in record.rounds:
        assert entry.rejections[cheater].reason == Reject.NON_FINITE
        assert "nan" in entry.rejections[cheater].detail and entry.scores[cheater] == 0.0
    assert cheater not in record.contributions


def test_a_copy_of_another_miners_delta_is_refused_and_the_original_keeps_its_credit(network):
    net, record, _ = network
    victim, copier = net.miners[0].hotkey, net.miners[4].hotkey
    for entry in record.rounds:
        assert entry.rejections[copier].reason == Reject.COPY and victim in entry.rejections[copier].detail
        assert victim not in entry.rejections
    assert copier not in record.contributions and victim in record.contributions


def test_honest_miners_get_positive_weights_on_chain_and_the_cheater_and_copier_none(network):
    net, _, _ = network
    uid = {n.hotkey: n.uid for n in net.chain.metagraph().neurons}
    weights = net.chain.weights()
    for key in net.validator_keys:
        row = weights[uid[key.ss58_address]]
        assert all(row.get(uid[m.hotkey], 0.0) > 0 for m in net.miners[:3])
        assert all(row.get(uid[m.hotkey], 0.0) == 0.0 for m in net.miners[3:])


def test_the_next_base_is_the_state_with_the_most_validator_stake_behind_it(network):
    net, record, facts = network
    honest, dissenter = (k.ss58_address for k in net.validator_keys)
    # round 0: the honest validator (100) outweighs the dissenter (50); round 1: the dissenter (150) outweighs it (100)
    r0 = net.reports[0]
    assert r0[honest].base_sha256 != r0[honest].state_sha256 == r0[dissenter].state_sha256  # both judged alike
    assert facts["bases"][1].sha256 == r0[honest].state_sha256 and facts["bases"][1].backers == {honest: 100.0, dissenter: 50.0}
    r1 = net.reports[DISSENT_ROUND]
    assert r1[honest].state_sha256 != r1[dissenter].state_sha256 == r1[dissenter].base_sha256
    assert facts["bases"][2].sha256 == r1[dissenter].state_sha256 and facts["bases"][2].backers == {dissenter: 150.0}
    assert record.rounds[DISSENT_ROUND].outcome == "kept" and record.rounds[DISSENT_ROUND].backers == {dissenter: 150.0}
    # every miner that trains trained round 2 from that state
    for miner in net.miners[:4]:
        trained = [e for e in read_events(net.run_dir / _folder(net, miner)) if e["event"] == "trained" and e["round"] == 2]
        assert trained and trained[0]["base"] == facts["bases"][2].sha256


def test_a_restarted_validator_resumes_after_its_last_completed_round(network):
    net, _, facts = network
    before = facts["before_restart"]
    assert facts["resumed_from"] == ROUNDS - 1 == before.last_round + 1
    after = read_model(net.run_dir / "validator-0" / STATE_FILE, ValidatorState)
    assert after.last_round == ROUNDS - 1 and after.ratings.round == ROUNDS - 1
    assert {r: after.reports[r] for r in before.reports} == before.reports  # earlier rounds were not judged again
    events = [e["event"] for e in read_events(net.run_dir / "validator-0")]
    assert events.count("resumed") == 1 and events.count("scored") == ROUNDS


def test_the_final_record_has_every_round_and_contribution_shares_summing_to_one(network):
    net, record, _ = network
    on_disk = JobRecord.model_validate_json((net.run_dir / "job" / RESULT_FILE).read_text())
    assert on_disk == record
    assert [e.round for e in record.rounds] == list(range(ROUNDS))
    assert record.final_state_sha256 == record.rounds[-1].state_sha256
    assert sum(record.contributions.values()) == pytest.approx(1.0)
    assert set(record.contributions) <= {m.hotkey for m in net.miners[:3]} and len(record.contributions) >= 2
    assert any(JobRecord.model_validate_json(net.store.get(d)) == record for d in net.store.digests() if _is_record(net.store.get(d)))


def test_no_store_object_holds_a_held_out_row(network, job_records, small_testbed):
    net, _, _ = network
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(small_testbed[1]))
    splits = split_job(job_records, SALT, validation=net.owner.job.split.validation, heldout=net.owner.job.split.heldout)
    objects = [net.store.get(d) for d in net.store.digests()]

    def stored(example) -> bool:
        needle = torch.tensor(example.input_ids, dtype=torch.int32).numpy().tobytes()  # train rows travel as int32
        return any(needle in blob for blob in objects)

    assert stored(encode_records(splits.train[5:6], tokenizer)[0])  # the check finds rows that were uploaded
    for record, example in zip(splits.heldout, encode_records(splits.heldout, tokenizer)):
        assert not stored(example)
        assert not any(record.response.encode() in blob for blob in objects)


def _folder(net, miner) -> str:
    return {3: "cheater", 4: "copier"}.get(net.miners.index(miner), f"miner-{net.miners.index(miner)}")


def _is_record(blob: bytes) -> bool:
    return blob.startswith(b'{"version":1,"job_id"') and b'"final_state_sha256"' in blob
