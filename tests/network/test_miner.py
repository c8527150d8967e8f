import pytest

from moeforge.chain.keys import keypair_from_uri
from moeforge.chain.local import LocalChain
from moeforge.errors import ChainError, ConfigError
from moeforge.network.commitment import decode_commitment, decode_reveal, verify_commitment
from moeforge.network.miner import Miner, Prepared, first_round
from moeforge.network.observe import read_events
from moeforge.network.role import RoleContext
from moeforge.network.state import StateRef
from moeforge.store.local import LocalStore
from moeforge.store.protocol import sha256_hex
from tests.network.conftest import make_job

JOB = make_job()  # rounds of 10 blocks from block 10: train 10-13, commit 14-15, reveal 16-17, score 18-19
MINER = keypair_from_uri("//moeforge/miner/0")


@pytest.mark.parametrize(("block", "expected"), [(0, 0), (10, 0), (14, 0), (15, 1), (19, 1), (20, 1), (26, 2)])
def test_a_miner_starts_with_the_first_round_whose_commit_deadline_it_can_still_meet(block, expected):
    assert first_round(JOB, block) == expected


@pytest.fixture
def miner(tmp_path):
    chain = LocalChain(tmp_path / "chain.sqlite", block_seconds=0)
    chain.register(MINER.ss58_address)
    return Miner(RoleContext(chain, LocalStore(tmp_path / "store"), MINER, run_dir=tmp_path / "miner"), job=JOB)


def _prepared(r: int = 0) -> Prepared:
    data = b"a signed delta"
    return Prepared(r, data, sha256_hex(data), StateRef("a" * 64, "b" * 64, -1), result=None, delta_norm=1.0)


def test_a_miner_commits_before_the_deadline_and_reveals_after_it(miner):
    miner.chain.step(12)
    assert miner.commit(_prepared())
    with pytest.raises(ChainError, match="before the commit deadline"):
        miner.reveal(_prepared())
    miner.chain.step(15 - miner.chain.block())
    block = miner.reveal(_prepared())
    assert block == 16 and miner.store.get(_prepared().digest) == b"a signed delta"
    committed = decode_commitment(miner.chain.commitment(MINER.ss58_address, at_block=15).data)
    assert verify_commitment(committed.commitment, _prepared().digest, MINER.ss58_address, 0)
    assert decode_reveal(miner.chain.commitment(MINER.ss58_address).data).digest == _prepared().digest


def test_a_miner_that_trained_past_the_deadline_does_not_commit_and_says_so(miner):
    miner.chain.step(15)  # a commitment would land in block 16, after the deadline
    assert not miner.commit(_prepared())
    assert miner.chain.commitment(MINER.ss58_address) is None
    assert [e["event"] for e in read_events(miner.observer.run_dir)] == ["missed_deadline"]


def test_a_miner_refuses_an_unknown_mode_and_an_unregistered_hotkey(tmp_path):
    chain = LocalChain(tmp_path / "chain.sqlite", block_seconds=0)
    with pytest.raises(ConfigError, match="--mode 'turbo'"):
        Miner(RoleContext(chain, LocalStore(tmp_path / "s"), MINER), job=JOB, mode="turbo")
    with pytest.raises(ChainError, match="not registered"):
        Miner(RoleContext(chain, LocalStore(tmp_path / "s"), MINER), job=JOB)


def _signed(r: int = 0, value: float = 0.5):
    """A real signed delta payload over one expert tensor, as `prepare` would pack it."""
    import torch

    from moeforge.network.transport import pack

    data = pack({"model.layers.1.mlp.experts.0.down_proj.weight": torch.full((2, 2), value)}, keypair=MINER, job=JOB.job_id,
                round=r, kind="delta")
    return Prepared(r, data, sha256_hex(data), None, None, 1.0)


def test_a_miner_killed_after_committing_reveals_the_very_bytes_it_committed_to(miner, tmp_path):
    from moeforge.network.miner import take_part

    miner.chain.step(12)
    prepared = _signed()
    assert miner.commit(prepared) and (tmp_path / "miner" / "pending" / "0.delta").read_bytes() == prepared.data
    restarted = Miner(RoleContext(miner.chain, miner.store, MINER, run_dir=tmp_path / "miner"), job=JOB)
    miner.chain.step(15 - miner.chain.block())  # the commit deadline
    take_part(restarted, 0, poll_s=0.01)  # a fresh process: no training, the kept delta
    assert decode_reveal(miner.chain.commitment(MINER.ss58_address).data).digest == prepared.digest
    assert miner.store.get(prepared.digest) == prepared.data and not (tmp_path / "miner" / "pending" / "0.delta").exists()
    assert [e["event"] for e in read_events(tmp_path / "miner")][-2:] == ["resumed", "revealed"]


def test_a_miner_never_reveals_bytes_other_than_the_ones_on_chain(miner, tmp_path):
    from moeforge.network.miner import take_part
    from moeforge.atomic import write_bytes

    miner.chain.step(12)
    assert miner.commit(_signed())
    write_bytes(tmp_path / "miner" / "pending" / "0.delta", _signed(value=0.25).data)  # not what it committed to
    miner.chain.step(15 - miner.chain.block())
    take_part(miner, 0, poll_s=0.01)
    assert decode_commitment(miner.chain.commitment(MINER.ss58_address).data).round == 0  # still the commitment
    assert [e["event"] for e in read_events(tmp_path / "miner")][-1] == "skipped"
    assert list(miner.store.digests()) == []


def test_a_miner_restarted_too_late_to_reveal_gives_the_round_up_without_revealing(miner, tmp_path):
    from moeforge.network.miner import take_part

    miner.chain.step(12)
    prepared = _signed()
    assert miner.commit(prepared)
    miner.chain.step(17 - miner.chain.block())  # the reveal deadline: a reveal now would land too late
    take_part(miner, 0, poll_s=0.01)
    assert [e["event"] for e in read_events(tmp_path / "miner")][-1] == "skipped"
    assert not miner.store.exists(prepared.digest) and not (tmp_path / "miner" / "pending" / "0.delta").exists()


def test_general_mix_replaces_that_share_of_the_shard_with_general_text_the_guard_never_scores(small_testbed):
    from transformers import AutoTokenizer

    from moeforge.eval.general import general_mix_rows, general_reference_rows
    from tests.network.conftest import make_job

    job = make_job(general_mix=0.25, shard_passes=1)
    assert job.general_mix_rows == round(0.25 * job.shard_rows) and make_job().general_mix_rows == 0
    with pytest.raises(ValueError, match="leaves no domain rows"):
        make_job(general_mix=0.99)
    tokenizer = AutoTokenizer.from_pretrained(str(small_testbed[1]))
    guard, _ = general_reference_rows(tokenizer, seq_len=64, rows=32)
    pool, _ = general_mix_rows(tokenizer, seq_len=64, skip_rows=32)
    guard_rows = {tuple(r.tolist()) for r in guard}
    assert pool.shape[0] > 0 and not any(tuple(r.tolist()) in guard_rows for r in pool)


def test_a_miner_with_general_mix_trains_on_its_domain_rows_plus_general_rows_of_its_own(tmp_path, small_testbed):
    import torch

    from moeforge.data.packing import Packed

    chain = LocalChain(tmp_path / "chain.sqlite", block_seconds=0)
    keys = [MINER, keypair_from_uri("//moeforge/miner/1")]
    job = make_job(general_mix=0.25, base_model=str(small_testbed[1]), seq_len=64)
    miners = []
    for key in keys:
        chain.register(key.ss58_address)
        miners.append(Miner(RoleContext(chain, LocalStore(tmp_path / "store"), key, run_dir=tmp_path / key.ss58_address), job=job))
    ids = torch.arange(6 * 64).reshape(6, 64)
    domain = Packed(input_ids=ids, labels=ids.clone(), n_tokens=ids.numel(), n_loss_tokens=ids.numel())
    mixed = [m._with_general(domain, 0) for m in miners]
    n = job.general_mix_rows
    for got in mixed:
        assert got.input_ids.shape[0] == 6 + n and torch.equal(got.input_ids[:6], ids) and got.n_tokens == got.input_ids.numel()
    assert not torch.equal(mixed[0].input_ids[6:], mixed[1].input_ids[6:])  # each miner draws its own
    assert torch.equal(miners[0]._with_general(domain, 0).input_ids, mixed[0].input_ids)  # deterministically


def test_an_offload_miner_trains_the_full_miners_delta_bit_for_bit(tmp_path, job_request, job_records):
    from harness.inprocess import InProcessNetwork
    from moeforge.network.transport import unpack
    from tests.network.conftest import SALT

    net = InProcessNetwork.create(tmp_path, LocalStore(tmp_path / "store"), job_request.model_copy(update={"rounds": 1}),
                                  job_records, SALT, miner_modes=["full"], validator_stakes=[100.0])
    job = net.publish()
    net.advance_to(job.schedule.round_start(0))
    key = net.miner_keys[0]
    offload = Miner(RoleContext(net.chain, net.store, key, run_dir=tmp_path / "offload"), job=job, mode="offload",
                    checkpointing=True)
    tensors = [unpack(m.prepare(0).data, expect_hotkey=key.ss58_address)[1] for m in (net.miners[0], offload)]
    assert tensors[0].keys() == tensors[1].keys() and tensors[0]
    assert all(tensors[0][k].equal(tensors[1][k]) for k in tensors[0])
    assert any(t.abs().sum() > 0 for t in tensors[1].values())


def test_a_miner_refuses_an_unknown_optimizer_before_any_work(tmp_path):
    chain = LocalChain(tmp_path / "chain.sqlite", block_seconds=0)
    chain.register(MINER.ss58_address)
    with pytest.raises(ConfigError, match="optimizer"):
        Miner(RoleContext(chain, LocalStore(tmp_path / "s"), MINER), job=JOB, optimizer="sgd")
    miner = Miner(RoleContext(chain, LocalStore(tmp_path / "s"), MINER), job=JOB, optimizer="adamw_8bit", loss_chunk_tokens=64,
                  checkpointing=True)
    assert miner.train_config.optimizer == "adamw_8bit" and miner.train_config.loss_chunk_tokens == 64
    assert miner.train_config.steps == JOB.inner_steps and miner.train_config.activation_checkpointing
