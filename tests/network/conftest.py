"""Network fixtures: the maths job on the session's small testbed, sized to run rounds in about a second."""

import pytest

from moeforge.data.corpora import load_corpus
from moeforge.network.owner import JobRequest
from moeforge.train.config import TrainConfig

SALT = "network-test-salt"
RECORDS = 600  # of GSM8K's train split: ~90 held-out records, ~500 to train on


@pytest.fixture(scope="session")
def job_records():
    return list(load_corpus("math", "train")[:RECORDS])


@pytest.fixture(scope="session")
def job_request(small_testbed):
    _, model_dir = small_testbed
    return JobRequest(
        job_id="maths-test", base_model=str(model_dir), domain="math", heldout=0.2, rounds=3, inner_steps=10,
        train=TrainConfig(lr=1e-2, batch_size=8, warmup_steps=1, weight_decay=0.0, checkpoint_every=0),
        profile_tokens=4096, score_rows=16, merge_rows=16, eval_batch_rows=8, report_rows=32,
        train_blocks=6, commit_blocks=2, reveal_blocks=2, score_blocks=4, start_delay_blocks=2,
        # the small testbed is too small for a miner's shard to leave a reliable mark on its delta (one pass over 80
        # rows: p 0.02–0.09 between honest miners), so its jobs record the evidence without requiring it;
        # tests/network/test_evidence.py tests the requirement where the mark is clear
        evidence_significance=1.0,
    )


def make_job(**overrides):
    """A valid JobSpec with placeholder digests, for tests of what reads one (schedule: 4 + 2 + 2 + 2 blocks from block 10)."""
    from moeforge.network.job import JobSpec, SplitSpec
    from moeforge.network.schedule import RoundSchedule

    digest = "ab" * 32
    fields = dict(
        job_id="unit-job", owner="5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", created_block=0, base_model="/nowhere",
        base_fingerprint=digest, model_type="deepseek_v2", seq_len=16, domain="math", data_fingerprint=digest,
        split=SplitSpec(), heldout_check=digest, heldout_rows=40, train_data=digest, train_rows=100,
        experts={1: (0, 3), 2: (5,)}, subset_experts={1: (0, 1, 3), 2: (4, 5)}, initial_state=digest, initial_state_sha256=digest,
        schedule=RoundSchedule(start_block=10, train_blocks=4, commit_blocks=2, reveal_blocks=2, score_blocks=2),
        rounds=3, block_seconds=1.0, inner_steps=2, train=TrainConfig(batch_size=4), norm_bound=1.0, significance=0.5,
        top_k=2, score_rows=8, merge_rows=8, eval_batch_rows=4,
    )
    return JobSpec(**{**fields, **overrides})
