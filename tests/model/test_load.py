import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from moeforge.errors import ArtifactNotFound, ModelError
from moeforge.model.load import load_model
from tests.model.tiny import tiny_model


@pytest.fixture
def saved(tmp_path):
    model = tiny_model("deepseek_v2")
    model.save_pretrained(tmp_path)
    return model, tmp_path


def test_load_is_exact(saved):
    model, path = saved
    loaded = load_model(path)
    assert not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_missing_weight_is_an_error_naming_the_key(saved):
    _, path = saved
    weights = load_file(path / "model.safetensors")
    del weights["model.layers.2.mlp.experts.4.up_proj.weight"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"missing keys: .*model\.layers\.2\.mlp\.experts"):
        load_model(path)


def test_unexpected_weight_is_an_error_naming_the_key(saved):
    _, path = saved
    weights = load_file(path / "model.safetensors")
    weights["model.layers.1.mlp.sneaky.weight"] = torch.zeros(2)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"unexpected keys: model\.layers\.1\.mlp\.sneaky\.weight"):
        load_model(path)


def test_mis_shaped_weight_is_an_error(saved):
    _, path = saved
    weights = load_file(path / "model.safetensors")
    weights["model.norm.weight"] = torch.ones(7)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"mismatched keys: .*model\.norm\.weight"):
        load_model(path)


def test_directory_without_config_is_named(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ArtifactNotFound, match=r"no config\.json; it has: weights\.bin"):
        load_model(tmp_path)


def test_uncached_hub_id_fails_offline_with_a_hint():
    with pytest.raises(ModelError, match="offline; pass --online"):
        load_model("no-such-org/no-such-moe-model")


def test_dense_checkpoint_is_refused_naming_supported_families(tmp_path):
    config = AutoConfig.for_model("llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match=r"'llama' is not a supported .*deepseek_v2"):
        load_model(tmp_path)


def test_missing_local_directory_is_named(tmp_path):
    with pytest.raises(ArtifactNotFound, match=r"absent: no such model directory"):
        load_model(tmp_path / "absent")
