import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from moeforge.errors import ModelError
from moeforge.model.families import FAMILIES, family_of, moe_layers
from tests.model.tiny import tiny_model


def _expected_moe_indices(config) -> list[int]:
    n = config.num_hidden_layers
    if config.model_type.startswith("deepseek"):
        return list(range(config.first_k_dense_replace, n))
    if config.model_type.startswith("qwen"):
        return [i for i in range(n) if i not in config.mlp_only_layers]
    if config.model_type == "llama4_text":
        return list(config.moe_layers)
    return list(range(n))


def test_moe_layers_follow_each_familys_dense_rule(model_type):
    model = tiny_model(model_type)
    layers = moe_layers(model)
    assert [layer.index for layer in layers] == _expected_moe_indices(model.config)
    for layer in layers:
        assert layer.num_experts == 8
        assert layer.top_k == model.config.num_experts_per_tok
        assert layer.router is not None


def test_shared_experts_are_reported():
    counts = {t: moe_layers(tiny_model(t))[0].num_shared for t in ("deepseek_v2", "qwen2_moe", "mixtral")}
    assert counts == {"deepseek_v2": 2, "qwen2_moe": 1, "mixtral": 0}


def test_dense_model_is_refused_with_the_supported_families():
    config = AutoConfig.for_model("llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2)
    with pytest.raises(ModelError) as err:
        family_of(config)
    assert "'llama'" in str(err.value)
    for name in FAMILIES:
        assert name in str(err.value)
    with pytest.raises(ModelError):
        moe_layers(AutoModelForCausalLM.from_config(config))
