import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from moeforge.errors import ConfigError, ModelError
from moeforge.extract.package import MODES, held_bytes, plan_memory, reduce_for_mode
from moeforge.extract.plan import CARDS_GIB, GIB, activation_bytes, bytes_by_kind, plan_device
from moeforge.model.experts import ExpertSlot
from moeforge.model.families import family_of, moe_layers
from moeforge.model.shipped import shipped_config
from moeforge.model.sizing import size_of_model
from tests.model.tiny import tiny_model

PLANNED = ("deepseek-v2-lite", "deepseek-v3", "qwen3-30b-a3b", "mixtral-8x7b")  # the four models


def _meta(name):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(shipped_config(name), dtype=torch.bfloat16)


def _module_bytes(modules) -> int:
    tensors = {id(t): t for m in modules for t in [*m.parameters(), *m.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.mark.parametrize("name", PLANNED)
def test_full_mode_weights_by_kind_sum_to_the_exact_size(name):
    plan = plan_device(shipped_config(name), "full")
    model = _meta(name)
    size = size_of_model(model)
    persistent = set(model.state_dict())
    not_in_checkpoint = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n not in persistent)
    assert plan.routed_experts == size.routed_expert_bytes
    assert plan.non_expert == size.backbone_bytes + not_in_checkpoint  # rotary tables are held, never saved
    assert plan.weights == size.total_bytes + not_in_checkpoint == held_bytes(model)


@pytest.mark.parametrize("model_type", ["deepseek_v2", "qwen2_moe", "mixtral"])
def test_kinds_match_the_modules_that_hold_them(model_type):
    model = tiny_model(model_type)
    family, layers = family_of(model.config), moe_layers(model)
    kinds = bytes_by_kind(model)
    blocks = [getattr(layer, family.block) for layer in model.model.layers]
    moe = {layer.index for layer in layers}
    assert kinds["attention"] == _module_bytes(layer.self_attn for layer in model.model.layers)
    assert kinds["routers"] == _module_bytes(layer.router for layer in layers)
    assert kinds["routed_experts"] == _module_bytes(layer.experts for layer in layers)
    assert kinds["dense_mlps"] == _module_bytes(b for i, b in enumerate(blocks) if i not in moe)
    assert kinds["embeddings"] == _module_bytes([model.model.embed_tokens, model.lm_head])
    shared = [m for i, b in enumerate(blocks) if i in moe for n, m in b.named_children() if family.shared and n.startswith(family.shared)]
    assert kinds["shared_experts"] == _module_bytes(shared)
    assert sum(kinds.values()) == held_bytes(model)


@pytest.mark.parametrize("mode", ["quantized", "subset"])
def test_kinds_of_a_real_reduced_model_sum_to_what_it_holds(mode):
    model = tiny_model("deepseek_v2")
    layers = moe_layers(model)
    reduce_for_mode(model, mode, [ExpertSlot(l.index, 0) for l in layers], {l.index: [0, 1, 2, 3] for l in layers})
    assert sum(bytes_by_kind(model).values()) == held_bytes(model)


@pytest.mark.parametrize("mode", MODES)
def test_one_part_holds_what_the_package_plan_counts(mode):
    config = shipped_config("deepseek-v2-lite")
    plan = plan_device(config, mode, trainable_per_layer=4, kept_per_layer=16)
    package = plan_memory(config, mode, trainable_per_layer=4, kept_per_layer=16)
    working = plan.routed_experts if mode == "offload" else 0  # the package counts what the model holds, not what it fetches
    assert plan.weights - working + plan.master == package.bytes_held  # the package plan counts the float32 masters only


@pytest.mark.parametrize("name", ["deepseek-v2-lite", "qwen3-30b-a3b", "mixtral-8x7b"])
def test_offload_holds_fewer_expert_bytes_than_subset_and_quantized(name):
    config = shipped_config(name)
    offload, subset, quantized = (plan_device(config, m, parts=4) for m in ("offload", "subset", "quantized"))
    assert offload.routed_experts < subset.routed_experts
    assert offload.routed_experts < quantized.routed_experts
    assert offload.host_experts == size_of_model(_meta(name)).routed_expert_bytes


def test_offload_working_set_is_the_distinct_experts_of_the_worst_routing_in_one_layer():
    config = shipped_config("deepseek-v2-lite")
    size = size_of_model(_meta("deepseek-v2-lite"))
    few = plan_device(config, "offload", batch=1, seq=3)  # 3 tokens × top-6: at most 18 of 64 experts
    assert few.routed_experts == 3 * size.top_k * size.bytes_per_expert
    many = plan_device(config, "offload", batch=1, seq=2048)
    assert many.routed_experts == size.experts_per_layer * size.bytes_per_expert


def test_more_parts_hold_less_trainable_state():
    config = shipped_config("deepseek-v2-lite")
    size = size_of_model(_meta("deepseek-v2-lite"))
    plans = [plan_device(config, "offload", parts=p, trainable_per_layer=6) for p in (1, 2, 3, 4, 8, 16)]
    states = [p.trainable_state for p in plans]
    assert states == sorted(states, reverse=True) and len(set(states)) == len(states)
    for p in plans:
        assert p.part_experts == math.ceil(6 * size.moe_layers / p.parts)
        assert p.trainable_state == 16 * size.params_per_expert * p.part_experts  # master + grad + 2 moments, float32
        assert p.master == p.grads == p.optimizer // 2


@pytest.mark.parametrize("name", PLANNED)
def test_checkpointing_lowers_activations(name):
    config = shipped_config(name)
    on = plan_device(config, "offload", parts=4, checkpointing=True)
    off = plan_device(config, "offload", parts=4, checkpointing=False)
    assert on.activations < off.activations
    assert (on.activations_checkpointed, on.activations_stored) == (off.activations_checkpointed, off.activations_stored)
    assert off.total - on.total == off.activations - on.activations


def test_activations_grow_linearly_with_tokens():
    model = _meta("deepseek-v2-lite")
    one, two = activation_bytes(model, 1024), activation_bytes(model, 2048)
    assert two == (2 * one[0], 2 * one[1])
    assert plan_device(shipped_config("deepseek-v2-lite"), "full", batch=2, seq=1024).activations == two[1]


def test_fraction_and_card_follow_the_total():
    config = shipped_config("deepseek-v2-lite")
    full = plan_device(config, "full")
    assert full.fraction_of_full == 1.0
    for plan in (full, plan_device(config, "offload", parts=4)):
        fits = [gib for gib in CARDS_GIB if plan.total <= gib * GIB]
        assert plan.card_gib == (fits[0] if fits else None)
    assert plan_device(shipped_config("deepseek-v3"), "full").card_gib is None


@pytest.mark.parametrize("kwargs, flag", [
    (dict(mode="sparse"), "--mode"),
    (dict(parts=0), "--parts"),
    (dict(batch=0), "--batch"),
    (dict(seq=0), "--seq"),
    (dict(parts=27, trainable_per_layer=1), "--parts"),  # V2-Lite has 26 MoE layers: 26 slots to split
    (dict(trainable_per_layer=0), "--trainable-per-layer"),
    (dict(trainable_per_layer=65), "--trainable-per-layer"),
])
def test_bad_input_is_a_config_error_naming_the_flag(kwargs, flag):
    kwargs = {"mode": "offload", **kwargs}
    with pytest.raises(ConfigError, match=flag):
        plan_device(shipped_config("deepseek-v2-lite"), kwargs.pop("mode"), **kwargs)


def test_a_mode_the_family_cannot_build_is_a_model_error():
    with pytest.raises(ModelError, match="softmax-then-top-k"):
        plan_device(shipped_config("deepseek-v3"), "subset")


def test_8bit_moments_and_a_chunked_loss_shrink_the_plan_by_exactly_their_bytes():
    config = shipped_config("deepseek-v2-lite")
    size = size_of_model(_meta("deepseek-v2-lite"))
    plain = plan_device(config, "offload", parts=4)
    lean = plan_device(config, "offload", parts=4, optimizer="adamw_8bit", loss_chunk_tokens=256)
    matrix = size.params_per_expert // 3  # gate, up, down: each 1408 × 2048
    assert lean.optimizer == lean.part_experts * 3 * (2 * matrix + 8 * math.ceil(matrix / 256))
    assert plain.optimizer == plain.part_experts * 8 * size.params_per_expert
    vocab, b = config.vocab_size, 2
    assert plain.activations - lean.activations == (2048 - 256) * vocab * (b + 8)
    assert lean.full_total == plain.full_total  # full mode as built is the same yardstick
    assert lean.full_total_same_training < lean.full_total  # like for like, full mode saves too
    assert lean.fraction_of_full < lean.fraction_of_full_same_training < 1


def test_an_unknown_optimizer_or_a_negative_chunk_is_refused():
    config = shipped_config("deepseek-v2-lite")
    with pytest.raises(ConfigError, match="--optimizer 'sgd'"):
        plan_device(config, "full", optimizer="sgd")
    with pytest.raises(ConfigError, match="--loss-chunk -1"):
        plan_device(config, "full", loss_chunk_tokens=-1)


def test_prefetch_counts_a_second_layers_working_set():
    config = shipped_config("deepseek-v2-lite")
    plain, ahead = plan_device(config, "offload", parts=4), plan_device(config, "offload", parts=4, prefetch=True)
    assert ahead.routed_experts == 2 * plain.routed_experts and ahead.total - plain.total == plain.routed_experts
    assert ahead.prefetch and not plan_device(config, "full", prefetch=True).prefetch  # only offload fetches ahead
