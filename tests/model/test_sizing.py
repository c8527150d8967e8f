import pytest
import torch
from transformers import AutoModelForCausalLM

from moeforge.errors import ConfigError
from moeforge.model.shipped import SHIPPED_CONFIGS, shipped_config
from moeforge.model.sizing import size_of_config, size_of_model
from tests.model.tiny import tiny_config


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_meta_counts_equal_counts_of_a_real_instance(model_type, dtype):
    config = tiny_config(model_type)
    planned = size_of_config(config, dtype=dtype)
    real = AutoModelForCausalLM.from_config(config, dtype=dtype)
    assert planned == size_of_model(real)
    assert planned.total_params == sum(p.numel() for p in real.parameters())
    state = {id(t): t for t in real.state_dict(keep_vars=True).values()}.values()
    assert planned.total_bytes == sum(t.numel() * t.element_size() for t in state)


def test_deepseek_v2_lite_is_15_7b_with_the_paper_expert_size():
    config = shipped_config("deepseek-v2-lite")
    size = size_of_config(config)
    assert round(size.total_params / 1e9, 1) == 15.7
    assert size.params_per_expert == 3 * config.hidden_size * config.moe_intermediate_size
    assert (size.moe_layers, size.experts_per_layer, size.top_k) == (config.num_hidden_layers - 1, 64, 6)
    assert size.bytes_per_expert == 2 * size.params_per_expert  # bfloat16
    assert size.routed_expert_params == size.moe_layers * 64 * size.params_per_expert


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_every_shipped_config_sizes_without_allocating(name):
    size = size_of_config(shipped_config(name))
    assert size.active_params < size.total_params
    assert size.backbone_params + size.routed_expert_params == size.total_params


def test_unknown_shipped_config_names_the_choices():
    with pytest.raises(ConfigError, match="deepseek-v2-lite"):
        shipped_config("deepseek-v9")
