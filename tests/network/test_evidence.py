"""Shard evidence on a toy model whose rows are random tokens, so training on a row leaves a clear mark on it."""

import hashlib
import math
import types

import pytest
import torch

from moeforge.data.packing import Packed
from moeforge.model.slices import extract_slice, linear_combination
from moeforge.network.checks import Submission, copy_groups, find_copies
from moeforge.network.commitment import commitment
from moeforge.network.evidence import Evidence, shard_evidence
from moeforge.network.shards import miner_shard
from tests.model.tiny import tiny_model
from tests.network.test_scoring import SLOTS, _noise_delta, _train

JOB = types.SimpleNamespace(job_id="evidence-job", evidence_rows=16, shard_rows=16)
TRAIN_ROWS = 96


def _packed(ids: torch.Tensor) -> Packed:
    return Packed(input_ids=ids, labels=ids.clone(), n_tokens=ids.numel(), n_loss_tokens=ids.numel())


@pytest.fixture(scope="module")
def round_one():
    """Round 1: honest miners 5A and 5B trained on their own shards; 5F re-submits last round's adopted update,
    rescaled and noised; 5C copies 5A's delta with a little noise."""
    g = torch.Generator().manual_seed(1)
    train = torch.randint(3, 96, (TRAIN_ROWS, 24), generator=g)
    control = torch.randint(3, 96, (24, 24), generator=g)
    model = tiny_model("deepseek_v2")
    current = extract_slice(model, SLOTS, "fp")

    def own(hotkey: str, r: int) -> torch.Tensor:
        return train[miner_shard(TRAIN_ROWS, JOB.job_id, r, hotkey, JOB.shard_rows)]

    honest_a, honest_b = _train(model, own("5A", 1), steps=24), _train(model, own("5B", 1), steps=24, seed=1)
    adopted_before = _train(model, own("5A", 0), steps=24)
    deltas = {
        "5A": honest_a, "5B": honest_b,
        "5F": linear_combination(current, [(0.9, adopted_before), (1.0, _noise_delta(current, 1e-3, seed=3))]),
        "5C": linear_combination(current, [(1.0, honest_a), (1.0, _noise_delta(current, 1e-4, seed=4))]),
    }
    groups = [["5A", "5C"], ["5B"], ["5F"]]
    evidence = shard_evidence(model, current, deltas, groups, _packed(train), (control, control.clone()), job=JOB, round=1,
                              batch_size=8)
    return model, current, deltas, evidence, (train, control)


def test_honest_miners_show_significant_evidence_on_their_own_shards(round_one):
    _, _, _, evidence, _ = round_one
    for hotkey in ("5A", "5B"):
        assert evidence[hotkey].statistic > 0.05 and evidence[hotkey].significant(0.01), evidence[hotkey].describe()
        assert evidence[hotkey].own_rows == 16 and evidence[hotkey].control_rows == 24


def test_a_free_rider_on_the_last_adopted_update_and_a_copier_show_none(round_one):
    _, _, _, evidence, _ = round_one
    assert not evidence["5F"].significant(0.05), evidence["5F"].describe()
    assert not evidence["5C"].significant(0.05), evidence["5C"].describe()
    assert evidence["5C"].statistic < evidence["5A"].statistic / 2
    assert evidence["5A"].peer == "the mean of 2 peers"  # its copy is not its peer


def test_of_two_copies_in_one_block_the_original_is_the_one_with_the_evidence_whatever_the_hashes(round_one):
    _, _, deltas, evidence, _ = round_one
    strength = {h: e.statistic for h, e in evidence.items()}
    subs = []
    for hotkey in ("5A", "5C"):
        digest = hashlib.sha256(hotkey.encode()).hexdigest()
        subs.append(Submission(hotkey, 30, commitment(digest, hotkey, 1), digest, deltas[hotkey].state_dict()))
    ground_first = sorted(subs, key=lambda s: s.commitment)[0].hotkey  # which one a hash order would call the original
    assert copy_groups(subs) == [sorted(["5A", "5C"], key=lambda h: next(s.commitment for s in subs if s.hotkey == h))]
    assert find_copies(subs, evidence=strength) == {"5C": "5A"}
    assert find_copies(subs) == {h: ground_first for h in ("5A", "5C") if h != ground_first}  # without evidence: the hash
    earlier = [Submission(**{**subs[1].__dict__, "commit_block": 29}), subs[0]]
    assert find_copies(earlier, evidence=strength) == {"5A": "5C"}  # an earlier block still wins: it was public first


def test_without_peers_the_previous_update_is_the_peer_and_without_either_nothing_is_asked(round_one):
    model, current, deltas, _, (train, control) = round_one
    alone = {"5A": deltas["5A"]}
    got = shard_evidence(model, current, alone, [["5A"]], _packed(train), (control, control.clone()), job=JOB, round=1,
                         fallback_peer=deltas["5F"], batch_size=8)
    assert got["5A"].peer == "the previous round's adopted update" and got["5A"].significant(0.01)
    assert shard_evidence(model, current, alone, [["5A"]], _packed(train), (control, control.clone()), job=JOB, round=1,
                          batch_size=8) == {"5A": None}
    no_control = shard_evidence(model, current, alone, [["5A"]], _packed(train), None, job=JOB, round=1,
                                fallback_peer=deltas["5F"], batch_size=8)
    assert no_control["5A"].control_rows == 0 and not no_control["5A"].significant(0.5)


def test_the_model_holds_the_reference_again_after_the_evidence(round_one):
    model, current, _, _, _ = round_one
    now = extract_slice(model, SLOTS, "fp").state_dict()
    assert all(torch.equal(now[k], t) for k, t in current.state_dict().items())


def test_a_level_of_one_records_the_evidence_without_requiring_it():
    weak = Evidence(statistic=-0.1, p_value=0.99, peer="x", own_rows=4, control_rows=4)
    assert weak.significant(1.0) and not weak.significant(0.999)
    assert not Evidence(0.1, math.nan, "x", 4, 0).significant(0.5)


def test_control_rows_with_nothing_to_predict_are_dropped_not_an_error(round_one):
    """A batch of control rows that are all padding (labels -100 throughout) leaves those rows out of the evidence."""
    model, current, deltas, evidence, (train, control) = round_one
    padded = torch.cat([control, control[:8]])
    labels = torch.cat([control.clone(), torch.full_like(control[:8], -100)])  # the last batch of 8 has no labels
    got = shard_evidence(model, current, deltas, [["5A", "5C"], ["5B"], ["5F"]], _packed(train), (padded, labels), job=JOB,
                         round=1, batch_size=8)
    assert got["5A"].control_rows == evidence["5A"].control_rows == control.shape[0]
    assert got["5A"].statistic == evidence["5A"].statistic
