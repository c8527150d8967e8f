"""Tests for moeforge/profile/stats.py: routing statistics against independent computations from the same routing."""

import pytest
import torch
from transformers import AutoTokenizer

from moeforge.data.corpora import load_corpus
from moeforge.data.fingerprint import fingerprint_records
from moeforge.data.formatting import encode_records
from moeforge.data.packing import pack_examples
from moeforge.errors import ConfigError, DataError
from moeforge.model.families import moe_layers
from moeforge.model.fingerprint import model_fingerprint
from moeforge.model.load import load_model
from moeforge.model.routing import RoutingRecorder
from moeforge.profile.contribution import ContributionRecorder
from moeforge.profile.stats import ProfileConfig, default_seq_len, profile_records, profile_routing
from tests.model.tiny import TINY, tiny_model


def _rows(model, shape=(3, 10), seed=0):
    return torch.randint(3, model.config.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def _reference(model, input_ids, n_tokens):
    """Counts, gate sums and contribution sums of the first n_tokens, from one plain forward with the recorders."""
    with RoutingRecorder(model) as routing, ContributionRecorder(model) as contributions, torch.no_grad():
        model(input_ids=input_ids)
    trace, norms = routing.pop(), contributions.pop()
    out = {}
    for layer in moe_layers(model):
        ids = trace.layers[layer.index].ids[:n_tokens]
        weights = trace.layers[layer.index].weights[:n_tokens]
        one_hot = torch.nn.functional.one_hot(ids, layer.num_experts).double()  # [T, k, E]
        out[layer.index] = (
            one_hot.sum(dim=(0, 1)),
            (one_hot * weights.double()[..., None]).sum(dim=(0, 1)),
            norms[layer.index][:n_tokens].double().sum(dim=0),
        )
    return out


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_scores_equal_an_independent_count_of_the_recorded_routing(model_type):
    model = tiny_model(model_type)
    x = _rows(model)
    profile = profile_routing(model, x, n_tokens=26, batch_size=x.shape[0], base_fingerprint="")
    reference = _reference(model, x, 26)
    assert list(profile.layers) == sorted(reference)
    assert profile.tokens == 26 and profile.top_k == 2 and profile.num_experts == 8
    for layer, (counts, gate_sums, norm_sums) in reference.items():
        assert profile.counts[layer] == tuple(int(c) for c in counts)
        assert sum(profile.token[layer]) == pytest.approx(1.0)
        assert profile.token[layer] == pytest.approx((counts / (26 * 2)).tolist())
        assert profile.gate[layer] == pytest.approx((gate_sums / gate_sums.sum()).tolist())
        mean = torch.where(counts > 0, norm_sums / counts.clamp(min=1), torch.zeros_like(norm_sums))
        assert profile.saliency[layer] == pytest.approx((mean / mean.sum()).tolist(), rel=1e-5)
        assert sum(profile.gate[layer]) == pytest.approx(1.0)
        assert sum(profile.saliency[layer]) == pytest.approx(1.0)


def test_padding_and_tokens_past_the_budget_are_not_counted():
    model = tiny_model("deepseek_v2")
    real = _rows(model, (3, 10))
    padded = real.clone()
    padded.view(-1)[25:] = model.config.pad_token_id
    junk = real.clone()
    junk.view(-1)[25:] = _rows(model, (5,), seed=1)
    with_pad = profile_routing(model, padded, n_tokens=25, base_fingerprint="")
    with_junk = profile_routing(model, junk, n_tokens=25, base_fingerprint="")
    assert with_pad.tokens == 25 and sum(with_pad.counts[1]) == 25 * 2
    assert with_pad.counts == with_junk.counts
    for layer in with_pad.layers:
        assert with_pad.gate_sums[layer] == pytest.approx(with_junk.gate_sums[layer])
    # Two whole rows of real tokens, then a row of nothing but padding: the same as the two rows alone.
    extra_row = torch.cat([real[:2], torch.full((1, 10), model.config.pad_token_id)])
    alone = profile_routing(model, real[:2], base_fingerprint="")
    assert profile_routing(model, extra_row, n_tokens=20, base_fingerprint="").counts == alone.counts


def test_batches_report_progress_and_cover_every_counted_token():
    model = tiny_model("qwen3_moe")
    x = _rows(model, (5, 6))
    seen = []
    profile = profile_routing(model, x, n_tokens=27, batch_size=2, base_fingerprint="", on_batch=seen.append)
    assert [(i.batch, i.batches) for i in seen] == [(1, 3), (2, 3), (3, 3)]
    assert [i.tokens for i in seen] == [12, 24, 27] and {i.total_tokens for i in seen} == {27}
    assert all(sum(c) == 27 * 2 for c in profile.counts.values())


def test_profiling_leaves_the_model_as_it_was():
    model = tiny_model("mixtral").train()
    before = model_fingerprint(model)
    profile = profile_routing(model, _rows(model))
    assert model.training, "training mode restored"
    assert profile.base_fingerprint == before == model_fingerprint(model)
    assert all(not l.router._forward_hooks and not l.experts._forward_hooks for l in moe_layers(model))


def test_without_saliency_the_profile_has_none():
    model = tiny_model("olmoe")
    profile = profile_routing(model, _rows(model), saliency=False, base_fingerprint="")
    assert profile.saliency is None and profile.saliency_sums is None
    with pytest.raises(ConfigError, match="without saliency"):
        profile.scores("saliency")


def test_more_tokens_than_the_rows_hold_is_a_config_error():
    model = tiny_model("deepseek_v2")
    with pytest.raises(ConfigError, match="31 tokens"):
        profile_routing(model, _rows(model), n_tokens=31)


@pytest.fixture(scope="module")
def testbed(small_testbed):
    _, path = small_testbed
    return load_model(path), AutoTokenizer.from_pretrained(path)


def test_records_are_profiled_up_to_the_token_budget(testbed):
    model, tokenizer = testbed
    records = load_corpus("math", "train")[:40]
    profile = profile_records(model, tokenizer, records, ProfileConfig(tokens=300, seq_len=32))
    assert profile.tokens == 300 and all(sum(c) == 300 * profile.top_k for c in profile.counts.values())
    lengths = [len(e.input_ids) for e in encode_records(records, tokenizer)]
    assert sum(lengths[: profile.records_used - 1]) < 300 <= sum(lengths[: profile.records_used])
    assert profile.data_fingerprint == fingerprint_records(records)
    assert profile.base_fingerprint == model_fingerprint(model)
    packed = pack_examples(encode_records(records[: profile.records_used], tokenizer), 32, tokenizer.pad_token_id)
    direct = profile_routing(model, packed.input_ids, n_tokens=300, base_fingerprint="")
    assert profile.counts == direct.counts and profile.seq_len == 32


def test_a_budget_beyond_the_data_profiles_all_of_it(testbed):
    model, tokenizer = testbed
    records = load_corpus("math", "train")[:3]
    total = sum(len(e.input_ids) for e in encode_records(records, tokenizer))
    profile = profile_records(model, tokenizer, records, ProfileConfig(tokens=10 * total, saliency=False))
    assert profile.tokens == total and profile.records_used == 3
    assert profile.seq_len == default_seq_len(model) == min(model.config.max_position_embeddings, 256)


def test_bad_profiling_requests_name_the_problem(testbed):
    model, tokenizer = testbed
    limit = model.config.max_position_embeddings
    with pytest.raises(ConfigError, match=f"seq_len {limit + 1} exceeds .* {limit}"):
        profile_records(model, tokenizer, load_corpus("math", "train")[:2], ProfileConfig(seq_len=limit + 1))
    with pytest.raises(DataError, match="no records"):
        profile_records(model, tokenizer, [])
