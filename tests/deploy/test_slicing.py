"""Slicing every family to K experts: a standard checkpoint whose routing is exact where the router allows it, and
moeforge's exact runtime (full router rows) equal to the unpruned model with its choice restricted, for the rest."""

import pytest
import torch

from moeforge.deploy.coverage import keep_experts
from moeforge.deploy.exact import SOFTMAX_ROUTERS, route_exactly
from moeforge.deploy.slicing import EXPERT_COUNT_KEY, build_sliced, router_kind, sliced_checkpoint
from moeforge.errors import ConfigError, ModelError
from moeforge.extract.subset import restrict_to_subset
from moeforge.model.families import FAMILIES, moe_layers
from tests.model.tiny import tiny_config, tiny_model

KEPT = (0, 2, 3, 5)


def _ids():
    return torch.randint(3, 90, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_family_slices_to_a_model_of_its_own_class_with_k_experts_and_the_kept_weights(model_type):
    model = tiny_model(model_type)
    kept = {layer.index: KEPT for layer in moe_layers(model)}
    sliced = build_sliced(model, kept)
    assert type(sliced) is type(model)
    assert getattr(sliced.config, EXPERT_COUNT_KEY[model_type]) == len(KEPT)
    for full, small in zip(moe_layers(model), moe_layers(sliced), strict=True):
        assert small.num_experts == len(KEPT)
        assert torch.equal(small.experts.gate_up_proj, full.experts.gate_up_proj[list(KEPT)])
        assert torch.equal(small.router.weight, full.router.weight[list(KEPT)])
    with torch.no_grad():
        assert torch.isfinite(sliced(input_ids=_ids()).logits).all()


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
def test_a_renormalising_router_routes_exactly_after_slicing(model_type):
    overrides = {"norm_topk_prob": True} if model_type == "qwen3_moe" else {}
    model = tiny_model(model_type)
    for key, value in overrides.items():
        setattr(model.config, key, value)
        for module in model.modules():
            if hasattr(module, key):
                setattr(module, key, value)
    assert router_kind(model.config).routing == "exact"
    kept = {layer.index: KEPT for layer in moe_layers(model)}
    sliced = build_sliced(model, kept)
    with torch.no_grad():
        got = sliced(input_ids=_ids()).logits
        restrict_to_subset(model, {k: list(v) for k, v in kept.items()})
        want = model(input_ids=_ids()).logits
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("model_type", [t for t in SOFTMAX_ROUTERS if router_kind(tiny_config(t)).routing == "denominator"])
def test_a_denominator_router_differs_when_sliced_and_the_exact_runtime_restores_the_unpruned_gates(model_type):
    model = tiny_model(model_type)
    layers = moe_layers(model)
    kept = {layer.index: KEPT for layer in layers}
    rows = {layer.index: layer.router.weight.detach().clone() for layer in layers}
    sliced = build_sliced(model, kept)
    runtime = build_sliced(model, kept)
    route_exactly(runtime, rows, kept, scale=float(getattr(model.config, "routed_scaling_factor", 1.0) or 1.0))
    with torch.no_grad():
        standard, exact = sliced(input_ids=_ids()).logits, runtime(input_ids=_ids()).logits
        restrict_to_subset(model, {k: list(v) for k, v in kept.items()})
        want = model(input_ids=_ids()).logits
    assert torch.allclose(exact, want, atol=1e-5)
    assert not torch.allclose(standard, want, atol=1e-4)  # the lost denominator shows


def test_slicing_refuses_uneven_too_few_or_unknown_experts():
    model = tiny_model("deepseek_v2")
    first, second = (layer.index for layer in moe_layers(model))
    with pytest.raises(ModelError, match="same number of experts"):
        sliced_checkpoint(model, {first: (0, 1, 2), second: (0, 1)})
    with pytest.raises(ModelError, match="keeps 1 < top_k 2"):
        sliced_checkpoint(model, {first: (0,), second: (1,)})
    with pytest.raises(ModelError, match=r"expert ids \[9\] do not exist"):
        sliced_checkpoint(model, {first: (0, 9), second: (0, 1)})


def test_coverage_keeps_a_uniform_k_at_least_top_k_and_refuses_bad_values(small_testbed):
    from moeforge.cli.inputs import load_checkpoint
    from moeforge.data.corpora import load_corpus
    from moeforge.profile.stats import ProfileConfig, profile_records

    _, path = small_testbed
    model, tokenizer = load_checkpoint(path)
    profile = profile_records(model, tokenizer, load_corpus("math", "train"), ProfileConfig(tokens=4096, seq_len=64))
    kept = keep_experts(profile, coverage=0.5)
    assert kept.k == max(profile.top_k, max(kept.needed.values()))
    assert all(len(ids) == kept.k for ids in kept.kept.values())
    assert all(kept.covered[layer] >= 0.5 - 1e-9 for layer in profile.layers if kept.needed[layer] == kept.k)
    assert keep_experts(profile, coverage=1.0).k >= kept.k
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="outside"):
            keep_experts(profile, coverage=bad)
    with pytest.raises(ConfigError, match="fewer experts than the router's top-k"):
        keep_experts(profile, k=profile.top_k - 1)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_familys_sliced_checkpoint_saves_and_loads_strictly_with_plain_transformers(model_type, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(model_type)
    sliced = build_sliced(model, {layer.index: KEPT for layer in moe_layers(model)})
    sliced.save_pretrained(tmp_path)
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert all(not v for v in info.values()), info
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(input_ids=_ids()).logits, sliced(input_ids=_ids()).logits, atol=1e-6)
