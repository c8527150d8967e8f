import pytest

from moeforge.chain.keys import keypair_from_uri
from moeforge.chain.local import LocalChain
from moeforge.errors import ChainError, ConfigError
from moeforge.network.commitment import encode_reveal
from moeforge.network.job import load_job, publish_job, read_job, wait_for_job
from moeforge.store.local import LocalStore
from moeforge.train.config import TrainConfig
from tests.network.conftest import make_job

OWNER = keypair_from_uri("//moeforge/owner")


@pytest.fixture
def ledger(tmp_path):
    chain = LocalChain(tmp_path / "chain.sqlite", block_seconds=0)
    chain.register(OWNER.ss58_address)
    return chain, LocalStore(tmp_path / "store")


def test_a_job_spec_refuses_samples_larger_than_the_held_out_split_and_shards_larger_than_the_train_split():
    with pytest.raises(ValueError, match="score_rows \\+ merge_rows = 48 exceeds the 40 held-out rows"):
        make_job(score_rows=24, merge_rows=24)
    with pytest.raises(ValueError, match="shard of 400 rows exceeds the 100 train rows"):
        make_job(inner_steps=100)


def test_a_job_spec_takes_the_miners_steps_from_inner_steps_only():
    with pytest.raises(ValueError, match="inner_steps"):
        make_job(train=TrainConfig(steps=5))
    job = make_job(inner_steps=3)
    assert job.miner_train_config().steps == 3 and job.shard_rows == 3 * job.train.rows_per_step
    assert [(s.layer, s.expert) for s in job.slots] == [(1, 0), (1, 3), (2, 5)]


def test_a_published_job_is_read_back_by_its_owner_hotkey(ledger):
    chain, store = ledger
    assert read_job(chain, store, OWNER.ss58_address) is None
    job = make_job(owner=OWNER.ss58_address)
    digest, block = publish_job(job, store=store, chain=chain, keypair=OWNER)
    chain.step(block)
    assert read_job(chain, store, OWNER.ss58_address) == (digest, job)
    assert wait_for_job(chain, store, OWNER.ss58_address, timeout_s=1) == (digest, job)


def test_another_commitment_from_the_owner_is_not_a_job(ledger):
    chain, store = ledger
    chain.commit(OWNER, encode_reveal("cd" * 32, 0))
    assert read_job(chain, store, OWNER.ss58_address) is None


def test_a_job_is_published_only_by_the_owner_it_names(ledger):
    chain, store = ledger
    with pytest.raises(ConfigError, match="published by"):
        publish_job(make_job(), store=store, chain=chain, keypair=OWNER)
    digest = store.put(make_job().model_dump_json().encode())
    with pytest.raises(ConfigError, match="committed by"):
        load_job(store, digest, owner=OWNER.ss58_address)


def test_a_stored_object_that_is_not_a_job_is_refused_naming_it(ledger):
    _, store = ledger
    digest = store.put(b'{"job_id": "x"}')
    with pytest.raises(ConfigError, match=f"job {digest[:16]}.*not a valid job spec"):
        load_job(store, digest)


def test_waiting_for_the_job_of_an_unregistered_or_silent_owner_fails_with_what_to_check(ledger):
    chain, store = ledger
    stranger = keypair_from_uri("//moeforge/stranger").ss58_address
    with pytest.raises(ChainError, match=f"owner hotkey {stranger} is not registered"):
        wait_for_job(chain, store, stranger, timeout_s=1)
    with pytest.raises(ChainError, match="published no job within 0 s"):
        wait_for_job(chain, store, OWNER.ss58_address, timeout_s=0.05, poll_s=0.01)


def test_shard_passes_shrink_the_shard_and_may_not_leave_less_than_a_step():
    from tests.network.conftest import make_job

    one, two = make_job(), make_job(shard_passes=2)
    assert one.shard_rows == one.inner_steps * one.train.rows_per_step == 2 * two.shard_rows
    with pytest.raises(ValueError, match="3 passes over the shard leave 3 rows, fewer than one step's 4"):
        make_job(shard_passes=3)


def test_parts_cut_the_slots_into_balanced_contiguous_ranges_and_every_role_assigns_the_same_part():
    from tests.network.conftest import make_job

    job = make_job(experts={1: (0, 2, 3, 5, 7), 2: (1, 4, 6)}, parts=3)
    parts = [job.part_slots(p) for p in range(3)]
    assert [s for p in parts for s in p] == job.slots  # disjoint, in order, covering every slot
    assert sorted(len(p) for p in parts) == [2, 3, 3]
    hotkeys = [f"5Hot{i}" for i in range(300)]
    assigned = [job.part_of(0, h) for h in hotkeys]
    assert assigned == [make_job(experts=job.experts, parts=3).part_of(0, h) for h in hotkeys]  # a function of its inputs
    assert all(60 <= assigned.count(p) <= 140 for p in range(3))  # about uniform
    assert [job.part_of(1, h) for h in hotkeys] != assigned  # drawn again each round
    assert job.assigned_slots(0, hotkeys[0]) == parts[assigned[0]]
    assert make_job().part_slots(0) == make_job().slots and make_job().part_of(5, "5Any") == 0


def test_more_parts_than_slots_is_refused():
    from pydantic import ValidationError

    from tests.network.conftest import make_job

    with pytest.raises(ValidationError, match="parts 4 is more than the 3 selected experts"):
        make_job(parts=4)
