"""The flywheel through the network: a job deposits its final state when it ends (again, after a restart, as the same
entry), and the next job on similar data is matched to that entry and warm-starts from it, recording the lineage."""

import pytest

from harness.inprocess import InProcessNetwork
from moeforge.data.corpora import load_corpus
from moeforge.network.observe import read_events
from moeforge.network.owner import ENTRY_FILE, Owner
from moeforge.network.role import RoleContext
from moeforge.store.local import LocalStore
from tests.network.conftest import SALT, job_request  # noqa: F401  (the maths job fixture)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

RECORDS = 400


def _job(run, request, library, *, job_id: str, records):
    net = InProcessNetwork.create(run, LocalStore(run / "store"), request.model_copy(update={"job_id": job_id}), records, SALT,
                                  miner_modes=["full", "full"], validator_stakes=[100.0], library=library)
    job = net.publish()
    for r in range(job.rounds):
        net.run_round(r)
    return net, job, net.finish()


def test_a_finished_job_is_deposited_once_and_the_next_similar_job_warm_starts_from_it(tmp_path, job_request, library):
    records = list(load_corpus("math", "train")[:RECORDS])
    request = job_request.model_copy(update={"rounds": 2})
    first, first_job, record = _job(tmp_path / "first", request, library, job_id="maths-1", records=records)
    assert record.accepted_rounds > 0 and first_job.warm_start == ()  # an empty library: a cold start
    entry = (first.run_dir / "job" / ENTRY_FILE).read_text().strip()
    manifest = library.manifest(entry)
    assert manifest.job_id == "maths-1" and manifest.source == "network"
    assert {c.id: c.share for c in manifest.contributors} == pytest.approx(record.contributions)
    assert manifest.metrics.domain_loss_after == record.heldout_loss_after
    assert manifest.metrics.general_ppl_before is not None and manifest.metrics.general_ppl_after is not None

    # the owner killed after writing its record, restarted on its run folder: the same record, the same single entry
    again = Owner(RoleContext(first.chain, first.store, first.owner.keypair, run_dir=first.run_dir / "job"), request=first.owner.request,
                  records=records, salt=SALT, library=library)
    again.publish()
    assert again.finish() == record
    assert [e.id for e in library.catalog.entries()] == [entry]

    # a new maths job (other records of the same corpus) is matched to the first job's entry and starts from its experts
    second, second_job, second_record = _job(tmp_path / "second", request, library, job_id="maths-2",
                                             records=list(load_corpus("math", "train")[RECORDS:2 * RECORDS]))
    assert [w.entry for w in second_job.warm_start] == [entry]
    assert second_job.warm_start[0].slots == len(set(first_job.slots) & set(second_job.slots))
    events = read_events(second.run_dir / "job")
    assert any(e["event"] == "warm_start" and e["entry"] == entry for e in events)
    if second_record.accepted_rounds:
        child = (second.run_dir / "job" / ENTRY_FILE).read_text().strip()
        assert library.catalog.parents(child) == [(entry, "warm_start", second_job.warm_start[0].slots)]


def test_warm_start_none_and_an_empty_library_start_from_the_base(tmp_path, job_request, library):
    records = list(load_corpus("math", "train")[:RECORDS])
    request = job_request.model_copy(update={"rounds": 1, "warm_start": "none"})
    _, job, _ = _job(tmp_path / "cold", request, library, job_id="maths-cold", records=records)
    assert job.warm_start == ()


def test_a_warm_start_from_named_entries_without_a_library_is_refused_before_publishing(tmp_path, job_request):
    from moeforge.errors import ConfigError

    records = list(load_corpus("math", "train")[:RECORDS])
    request = job_request.model_copy(update={"warm_start": "abcdef123456"})
    net = InProcessNetwork.create(tmp_path, LocalStore(tmp_path / "store"), request, records, SALT, miner_modes=["full"],
                                  validator_stakes=[100.0])
    with pytest.raises(ConfigError, match="no expert library"):
        net.publish()
    assert net.chain.commitment(net.owner.keypair.ss58_address) is None


def test_a_warm_start_from_an_unknown_entry_is_refused_naming_it(tmp_path, job_request, library):
    from moeforge.errors import ArtifactNotFound

    records = list(load_corpus("math", "train")[:RECORDS])
    request = job_request.model_copy(update={"warm_start": "abcdef123456"})
    net = InProcessNetwork.create(tmp_path, LocalStore(tmp_path / "store"), request, records, SALT, miner_modes=["full"],
                                  validator_stakes=[100.0], library=library)
    with pytest.raises(ArtifactNotFound, match="no library entry 'abcdef123456'"):
        net.publish()
