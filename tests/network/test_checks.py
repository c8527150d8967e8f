import hashlib

import pytest
import torch

from moeforge.data.packing import Packed
from moeforge.model.experts import ExpertSlot
from moeforge.model.slices import ExpertSlice, extract_slice, make_delta
from moeforge.network.checks import (
    Earlier, Reject, Revealed, Submission, Verdict, check_delta, check_reveal, delta_slice, expected_layout, find_copies,
    find_replays,
    relative_norm_bound,
)
from moeforge.network.commitment import commitment, encode_commitment, encode_reveal
from moeforge.network.schedule import RoundSchedule
from moeforge.train.config import TrainConfig
from moeforge.train.esft import train_experts
from tests.model.tiny import tiny_model

SLOTS = [ExpertSlot(1, 0), ExpertSlot(1, 5), ExpertSlot(2, 3)]
KEY = "model.layers.1.mlp.experts.5.up_proj.weight"


@pytest.fixture(scope="module")
def current():
    return extract_slice(tiny_model("deepseek_v2"), SLOTS, "fp")


def _noise(current: ExpertSlice, scale: float = 1e-2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random delta in the wire format for `current`: float64 for a float32 base."""
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(t.shape, generator=g, dtype=torch.float64) for k, t in current.state_dict().items()}


def _check(tensors, current, bound=1e3):
    return check_delta(tensors, expected_layout(current), norm_bound=bound, hotkey="5Miner")


def test_a_well_formed_delta_passes_and_becomes_a_delta_slice(current):
    new = ExpertSlice("experts", current.model_type, "fp", {s: w for s, w in current.weights.items()})
    tensors = make_delta(current, new).state_dict()
    tensors = {k: t + 1e-3 for k, t in tensors.items()}
    assert _check(tensors, current) is None
    piece = delta_slice(tensors, current)
    assert piece.kind == "delta" and piece.slots == SLOTS
    assert all(torch.equal(piece.state_dict()[k], tensors[k]) for k in tensors)


def test_nan_in_one_tensor_is_rejected_naming_it_and_the_count(current):
    tensors = _noise(current)
    tensors[KEY][0, 0], tensors[KEY][3, 1] = float("nan"), float("inf")
    v = _check(tensors, current)
    assert v == Verdict("5Miner", Reject.NON_FINITE, f"{KEY}: 2 non-finite values (1 nan, 1 inf)")


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        ("model.embed_tokens.weight", "non-expert: embeddings"),
        ("model.layers.1.mlp.gate.weight", "non-expert: router"),
        ("model.layers.2.self_attn.q_proj.weight", "non-expert: attention"),
        ("model.layers.1.post_attention_layernorm.weight", "non-expert: norm"),
        ("model.layers.1.mlp.shared_experts.up_proj.weight", "non-expert: shared experts"),
        ("lm_head.weight", "non-expert: output head"),
        ("model.layers.2.mlp.experts.4.gate_proj.weight", "a routed expert not assigned"),
        ("model.layers.2.mlp.experts.gate_up_proj", "a whole layer's fused experts"),
    ],
)
def test_an_unexpected_key_is_rejected_and_named_with_what_it_is(current, extra, kind):
    tensors = _noise(current)
    tensors[extra] = torch.zeros(2, 2, dtype=torch.float64)
    v = _check(tensors, current)
    assert v.reject == Reject.WRONG_KEYS and f"unexpected {extra} ({kind})" in v.detail


def test_missing_keys_are_all_listed(current):
    tensors = _noise(current)
    gone = sorted(k for k in tensors if ".experts.3." in k)
    for k in gone:
        del tensors[k]
    v = _check(tensors, current)
    assert v.reject == Reject.WRONG_KEYS and v.detail == "missing " + ", ".join(gone)


def test_wrong_shape_is_rejected_naming_the_tensor(current):
    tensors = _noise(current)
    tensors[KEY] = tensors[KEY][:, :-1]
    v = _check(tensors, current)
    assert v.reject == Reject.WRONG_SHAPE and f"{KEY} has shape (16, 31), expected (16, 32)" in v.detail


def test_bf16_instead_of_f32_is_rejected(current):
    bf16_base = ExpertSlice("experts", current.model_type, "fp", {
        s: type(w)(**{k: t.to(torch.bfloat16) for k, t in vars(w).items() if t is not None}) for s, w in current.weights.items()
    })
    layout = expected_layout(bf16_base)
    assert {dtype for _, dtype in layout.values()} == {torch.float32}  # make_delta's rule for 16-bit bases
    tensors = {k: t.float() for k, t in _noise(current).items()}
    tensors[KEY] = tensors[KEY].bfloat16()
    v = check_delta(tensors, layout, norm_bound=1e3, hotkey="5Miner")
    assert v.reject == Reject.WRONG_DTYPE and v.detail == f"{KEY} is bfloat16, expected float32"


def test_huge_norm_is_rejected_naming_the_largest_tensor(current):
    tensors = _noise(current)
    tensors[KEY] = tensors[KEY] * 1e4
    bound = relative_norm_bound(current, 0.5)
    assert bound > 0
    v = _check(tensors, current, bound=bound)
    assert v.reject == Reject.NORM_BOUND and f"largest tensor: {KEY}" in v.detail


def test_zero_delta_and_non_tensors_are_rejected(current):
    zeros = {k: torch.zeros_like(t) for k, t in _noise(current).items()}
    assert _check(zeros, current).reject == Reject.ZERO_DELTA
    garbage = {**_noise(current), KEY: [1.0, 2.0]}
    v = _check(garbage, current)
    assert v.reject == Reject.MALFORMED and KEY in v.detail


# commit and reveal

S = RoundSchedule(start_block=100, train_blocks=10, commit_blocks=3, reveal_blocks=4, score_blocks=5)
DIGEST = hashlib.sha256(b"delta").hexdigest()
HK = "5Miner"


def _commit(hotkey=HK, r=0, digest=DIGEST):
    return encode_commitment(commitment(digest, hotkey, r), r)


def test_a_timely_matching_reveal_passes():
    got = check_reveal(HK, 0, S, commit=(_commit(), 112), reveal=(encode_reveal(DIGEST, 0), 116))
    assert got == Revealed(HK, DIGEST, commitment(DIGEST, HK, 0), 112, 116)


@pytest.mark.parametrize(
    ("commit", "reveal", "reject", "words"),
    [
        (None, None, Reject.NO_COMMITMENT, "no commitment"),
        ((b"junk", 105), None, Reject.MALFORMED, "commitment at block 105: payload is 4 bytes"),
        ((_commit(r=1), 105), None, Reject.NO_COMMITMENT, "for round 1, not 0"),
        ((_commit(), 113), None, Reject.LATE, "committed at block 113, outside round 0's window 100..112"),
        ((_commit(), 110), None, Reject.NO_REVEAL, "revealed nothing"),
        ((_commit(), 110), (encode_reveal(DIGEST, 0), 117), Reject.LATE, "revealed at block 117"),
        ((_commit(), 110), (b"\x01\x02", 114), Reject.MALFORMED, "reveal at block 114"),
        ((_commit(hotkey="5Other"), 110), (encode_reveal(DIGEST, 0), 114), Reject.COMMITMENT_MISMATCH, "does not match"),
    ],
)
def test_commit_and_reveal_failures_are_named(commit, reveal, reject, words):
    v = check_reveal(HK, 0, S, commit=commit, reveal=reveal)
    assert isinstance(v, Verdict) and v.reject == reject and words in v.detail


# copies


def _sub(hotkey, block, tensors, digest=None):
    digest = digest or hashlib.sha256(hotkey.encode()).hexdigest()
    return Submission(hotkey, block, commitment(digest, hotkey, 0), digest, tensors)


def test_exact_and_noisy_copies_are_flagged_with_the_earlier_committer_as_original(current):
    original = _noise(current, seed=1)
    noisy = {k: t + 0.05 * t.std() * torch.randn_like(t) for k, t in original.items()}  # 5% noise
    subs = [
        _sub("5Copier", 15, dict(original)),
        _sub("5Noisy", 12, noisy),
        _sub("5Honest", 11, _noise(current, seed=2)),
        _sub("5Original", 10, original),
        _sub("5Scaled", 14, {k: 0.5 * t for k, t in original.items()}),
    ]
    copies = find_copies(subs)
    assert copies == {"5Copier": "5Original", "5Noisy": "5Original", "5Scaled": "5Original"}
    assert find_copies(list(reversed(subs))) == copies


def test_a_same_block_tie_is_broken_by_the_lower_commitment_hash(current):
    tensors = _noise(current, seed=3)
    a, b = _sub("5Alice", 20, tensors), _sub("5Bob", 20, {k: t.clone() for k, t in tensors.items()})
    first, second = sorted([a, b], key=lambda s: s.commitment)
    assert find_copies([a, b]) == find_copies([b, a]) == {second.hotkey: first.hotkey}


def test_a_replay_of_an_earlier_rounds_accepted_delta_is_flagged(current):
    old = _sub("5Replayer", 10, _noise(current, seed=4), digest="ab" * 32)
    assert find_copies([old], earlier_digests={"ab" * 32: "5FirstWinner"}) == {"5Replayer": "5FirstWinner"}


def test_a_re_signed_or_rescaled_replay_is_caught_by_its_tensors_not_its_digest(current):
    old = _noise(current, seed=5)
    earlier = [Earlier("round 0's accepted delta by 5Winner", "5Winner", old, "cd" * 32)]
    resigned = _sub("5Resigned", 30, {k: t.clone() for k, t in old.items()})  # a new digest
    resigned = Submission(**{**resigned.__dict__, "content_sha256": "cd" * 32})
    subs = [resigned, _sub("5Scaled", 30, {k: 2 * t for k, t in old.items()}), _sub("5Fresh", 30, _noise(current, seed=6))]
    replays = find_replays(subs, earlier)
    assert set(replays) == {"5Resigned", "5Scaled"}
    assert "content sha256" in replays["5Resigned"] and "5Winner" in replays["5Scaled"]


def _packed(seed: int) -> Packed:
    g = torch.Generator().manual_seed(seed)
    ids = (torch.randint(0, 96, (16, 1), generator=g) + 7 * torch.arange(24)).remainder(90) + 3
    return Packed(input_ids=ids, labels=ids.clone(), n_tokens=ids.numel(), n_loss_tokens=ids.numel())


def test_honest_deltas_trained_on_different_shards_are_not_copies():
    model = tiny_model("deepseek_v2")
    subs = []
    for seed in range(3):
        cfg = TrainConfig(lr=1e-2, steps=6, batch_size=4, warmup_steps=1, weight_decay=0.0, seed=seed)
        delta, _ = train_experts(model, SLOTS, _packed(seed), cfg, base_fingerprint="fp")
        subs.append(_sub(f"5Honest{seed}", 10 + seed, delta.state_dict()))
    assert find_copies(subs) == {}
