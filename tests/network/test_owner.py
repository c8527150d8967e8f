import pytest
import torch

from moeforge.chain.keys import keypair_from_uri
from moeforge.chain.local import LocalChain
from moeforge.errors import ConfigError
from moeforge.model.load import load_model
from moeforge.model.slices import extract_slice
from moeforge.network.job import read_job
from moeforge.network.jobdata import decode_train_rows
from moeforge.network.owner import Owner
from moeforge.network.role import RoleContext
from moeforge.network.state import StateRef, fetch_state
from moeforge.store.local import LocalStore
from tests.network.conftest import SALT

OWNER = keypair_from_uri("//moeforge/owner")


@pytest.fixture
def parts(tmp_path):
    chain = LocalChain(tmp_path / "chain.sqlite", block_seconds=0)
    chain.register(OWNER.ss58_address)
    return chain, LocalStore(tmp_path / "store"), tmp_path / "job"


def _owner(parts, request, records):
    chain, store, run = parts
    return Owner(RoleContext(chain, store, OWNER, run_dir=run), request=request, records=records, salt=SALT)


def test_publishing_puts_the_train_rows_and_the_base_experts_in_the_store_and_names_the_job_on_chain(parts, job_request, job_records):
    chain, store, _ = parts
    digest, job = _owner(parts, job_request, job_records).publish()
    assert read_job(chain, store, OWNER.ss58_address) == (digest, job)
    assert job.schedule.start_block == job.created_block + job_request.start_delay_blocks
    rows = decode_train_rows(store.get(job.train_data), seq_len=job.seq_len, rows=job.train_rows)
    assert rows.input_ids.shape == (job.train_rows, job.seq_len) and job.heldout_rows >= job.score_rows + job.merge_rows
    base = extract_slice(load_model(job.base_model), job.slots, job.base_fingerprint)
    initial = fetch_state(store, StateRef(job.initial_state_sha256, job.initial_state, -1), job=job, reference=base)
    assert all(torch.equal(initial.state_dict()[k], t) for k, t in base.state_dict().items())
    assert set(job.experts) == set(job.subset_experts)  # a subset-mode miner holds experts in every trained layer


def test_an_owner_restarted_on_its_run_folder_reuses_the_job_it_published(parts, job_request, job_records):
    chain, _, _ = parts
    digest, _ = _owner(parts, job_request, job_records).publish()
    landed = chain.commitment(OWNER.ss58_address).block
    chain.step(3)
    assert _owner(parts, job_request, job_records).publish()[0] == digest
    assert chain.commitment(OWNER.ss58_address).block == landed


def test_a_request_whose_samples_do_not_fit_the_held_out_split_is_refused_naming_the_options(parts, job_request, job_records):
    request = job_request.model_copy(update={"score_rows": 5000})
    with pytest.raises(ConfigError, match="exceeds the .* held-out rows.*score_rows/merge_rows"):
        _owner(parts, request, job_records).publish()
    assert parts[0].commitment(OWNER.ss58_address) is None


def test_held_out_sample_sizes_left_at_their_defaults_are_sized_to_a_small_data_set(parts, job_request, job_records):
    fields = job_request.model_dump(exclude={"score_rows", "merge_rows"})
    request = type(job_request)(**fields)  # score_rows, merge_rows at their defaults (32 + 32)
    _, job = _owner(parts, request, job_records[:60]).publish()
    assert job.heldout_rows < 64, "the data set should be too small for the default sizes"
    assert job.score_rows + job.merge_rows == job.heldout_rows and min(job.score_rows, job.merge_rows) >= 1


def test_an_owner_given_a_selection_publishes_exactly_those_experts_without_profiling(parts, job_request, job_records, monkeypatch):
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.network import owner as owner_module
    from moeforge.profile.selection import ExpertConfig

    model = load_model(job_request.base_model)
    chosen = ExpertConfig(experts={1: (0, 2)}, model_type=model.config.model_type, num_experts=model.config.n_routed_experts,
                          top_k=model.config.num_experts_per_tok, base_fingerprint=model_fingerprint(model))
    monkeypatch.setattr(owner_module, "profile_records", lambda *a, **k: pytest.fail("the owner profiled anyway"))
    chain, store, run = parts
    owner = Owner(RoleContext(chain, store, OWNER, run_dir=run), request=job_request, records=job_records, salt=SALT,
                  selection=chosen)
    _, job = owner.publish()
    assert [(s.layer, s.expert) for s in job.slots] == [(1, 0), (1, 2)]
    assert job.subset_experts == job.experts  # a subset miner holds just the given experts


def test_a_selection_made_on_another_base_model_is_refused_before_publishing(parts, job_request, job_records):
    from moeforge.profile.selection import ExpertConfig

    chain, store, run = parts
    other = ExpertConfig(experts={1: (0,)}, model_type="deepseek_v2", num_experts=4, top_k=2, base_fingerprint="ab" * 32)
    owner = Owner(RoleContext(chain, store, OWNER, run_dir=run), request=job_request, records=job_records, salt=SALT,
                  selection=other)
    with pytest.raises(ConfigError, match="selection was made on base model abababab"):
        owner.publish()
    assert chain.commitment(OWNER.ss58_address) is None
