import pytest
import torch
from transformers import AutoModelForCausalLM

from moeforge.errors import ConfigError
from moeforge.extract.package import MODES, held_bytes, plan_memory, reduce_for_mode, slice_bytes
from moeforge.model.experts import ExpertSlot
from moeforge.model.families import moe_layers
from moeforge.model.shipped import shipped_config
from moeforge.model.sizing import size_of_config
from tests.model.tiny import tiny_config, tiny_model


@pytest.mark.parametrize("mode", MODES)
def test_meta_plan_equals_the_bytes_a_real_reduced_model_holds(mode):
    config = tiny_config("deepseek_v2")
    plan = plan_memory(config, mode, trainable_per_layer=2, kept_per_layer=4, dtype=torch.float32)
    model = tiny_model("deepseek_v2")
    trainable = [ExpertSlot(l.index, e) for l in moe_layers(model) for e in range(2)]
    kept = {l.index: list(range(4)) for l in moe_layers(model)}
    reduce_for_mode(model, mode, trainable, kept)
    assert plan.bytes_held == held_bytes(model) + slice_bytes(tiny_model("deepseek_v2"), trainable)


def test_full_mode_holds_the_whole_model_plus_the_slice():
    config = shipped_config("deepseek-v2-lite")
    size = size_of_config(config)
    plan = plan_memory(config, "full", trainable_per_layer=4)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    persistent = set(model.state_dict())
    rotary = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n not in persistent)
    assert plan.bytes_held == size.total_bytes + rotary + 4 * size.moe_layers * 4 * size.params_per_expert  # float32 masters


def test_reduced_modes_hold_less_on_deepseek_v2_lite():
    config = shipped_config("deepseek-v2-lite")
    full = plan_memory(config, "full", trainable_per_layer=4)
    quantized = plan_memory(config, "quantized", trainable_per_layer=4)
    subset = plan_memory(config, "subset", trainable_per_layer=4, kept_per_layer=16)
    assert subset.bytes_held < quantized.bytes_held < full.bytes_held
    assert quantized.fraction_of_full < 0.7


def test_unknown_mode_and_missing_subset_are_config_errors():
    with pytest.raises(ConfigError, match="unknown miner mode"):
        reduce_for_mode(tiny_model("deepseek_v2"), "sparse", [])
    with pytest.raises(ConfigError, match="needs the experts to keep"):
        reduce_for_mode(tiny_model("deepseek_v2"), "subset", [])
