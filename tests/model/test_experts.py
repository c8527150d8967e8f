import pytest
import torch
from safetensors.torch import load_file
from transformers.activations import ACT2FN

from moeforge.errors import ModelError
from moeforge.model.experts import ExpertSlot, ExpertWeights, read_expert, write_expert
from moeforge.model.families import moe_layers
from moeforge.model.load import load_model

from tests.model.tiny import tiny_model


def _random_like(w: ExpertWeights, seed: int) -> ExpertWeights:
    g = torch.Generator().manual_seed(seed)
    parts = {k: (torch.randn(v.shape, generator=g) if v is not None else None) for k, v in vars(w).items()}
    return ExpertWeights(**parts)


def test_expert_written_then_saved_and_loaded_is_bit_identical(model_type, tmp_path):
    model = tiny_model(model_type)
    layers = moe_layers(model)
    slots = [ExpertSlot(layers[0].index, 3), ExpertSlot(layers[-1].index, 7)]
    written = {}
    for i, slot in enumerate(slots):
        written[slot] = _random_like(read_expert(model, slot), seed=i)
        write_expert(model, slot, written[slot])
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    for slot, w in written.items():
        back = read_expert(loaded, slot).tensors()
        for name, t in w.tensors().items():
            assert torch.equal(back[name], t), (slot, name)


def test_writing_one_expert_leaves_every_other_expert_unchanged(model_type):
    model = tiny_model(model_type)
    layer = moe_layers(model)[0]
    before = {e: read_expert(model, ExpertSlot(layer.index, e)) for e in range(layer.num_experts)}
    target = ExpertSlot(layer.index, 5)
    write_expert(model, target, _random_like(before[5], seed=9))
    for e, w in before.items():
        same = all(torch.equal(a, b) for a, b in zip(w.tensors().values(), read_expert(model, ExpertSlot(layer.index, e)).tensors().values()))
        assert same == (e != 5)


_SAVED_NAMES = {  # how save_pretrained names one expert's parts, where it writes per-expert keys
    "deepseek_v2": ("mlp", {"gate_proj.weight": "gate_proj.weight", "up_proj.weight": "up_proj.weight", "down_proj.weight": "down_proj.weight"}),
    "qwen3_moe": ("mlp", {"gate_proj.weight": "gate_proj.weight", "up_proj.weight": "up_proj.weight", "down_proj.weight": "down_proj.weight"}),
    "olmoe": ("mlp", {"gate_proj.weight": "gate_proj.weight", "up_proj.weight": "up_proj.weight", "down_proj.weight": "down_proj.weight"}),
    "mixtral": ("block_sparse_moe", {"gate_proj.weight": "w1.weight", "up_proj.weight": "w3.weight", "down_proj.weight": "w2.weight"}),
}


@pytest.mark.parametrize("model_type", sorted(_SAVED_NAMES))
def test_read_expert_matches_per_expert_checkpoint_keys(model_type, tmp_path):
    # save_pretrained converts the fused tensors back to per-expert keys: a second code path.
    block, names = _SAVED_NAMES[model_type]
    model = tiny_model(model_type)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    for layer in moe_layers(model):
        for e in (0, layer.num_experts - 1):
            w = read_expert(model, ExpertSlot(layer.index, e))
            for part, t in w.tensors().items():
                assert torch.equal(saved[f"model.layers.{layer.index}.{block}.experts.{e}.{names[part]}"], t)


def _expected_output(model_type, w: ExpertWeights, x, config):
    gate, up = x @ w.gate.T, x @ w.up.T
    if model_type == "gpt_oss":  # clamped SwiGLU with biases (the model card's activation)
        gate = (gate + w.gate_bias).clamp(max=config.swiglu_limit)
        up = (up + w.up_bias).clamp(-config.swiglu_limit, config.swiglu_limit)
        return ((up + 1) * gate * torch.sigmoid(gate * config.swiglu_alpha)) @ w.down.T + w.down_bias
    return (ACT2FN[config.hidden_act](gate) * up) @ w.down.T


def test_read_expert_computes_what_the_experts_module_computes(model_type):
    model = tiny_model(model_type)
    layer = moe_layers(model)[-1]
    expert = 6
    w = read_expert(model, ExpertSlot(layer.index, expert))
    x = torch.randn(3, model.config.hidden_size)
    with torch.no_grad():
        if model_type == "llama4_text":  # input is pre-sorted per expert: [E * N, H]
            routed = torch.zeros(layer.num_experts, 3, x.shape[-1])
            routed[expert] = x
            out = layer.experts(routed.reshape(-1, x.shape[-1])).reshape(layer.num_experts, 3, -1)[expert]
        else:
            ids = torch.full((3, 1), expert)
            out = layer.experts(x, ids, torch.ones(3, 1))
        expected = _expected_output(model_type, w, x, model.config)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_slot_outside_the_model_is_an_error_naming_it():
    model = tiny_model("deepseek_v2")
    with pytest.raises(ModelError, match=r"layer 0 is not a MoE layer.*MoE layers: 1-2"):
        read_expert(model, ExpertSlot(0, 0))
    with pytest.raises(ModelError, match=r"expert 8 does not exist in layer 1.*0\.\.7"):
        read_expert(model, ExpertSlot(1, 8))


def test_wrong_shape_write_is_refused_and_changes_nothing():
    model = tiny_model("qwen3_moe")
    slot = ExpertSlot(moe_layers(model)[0].index, 2)
    before = read_expert(model, slot)
    bad = ExpertWeights(gate=before.gate, up=before.up, down=torch.zeros(before.down.shape[0] + 1, before.down.shape[1]))
    with pytest.raises(ModelError, match=r"down_proj.weight has shape \(33, 16\), expected \(32, 16\)"):
        write_expert(model, slot, bad)
    after = read_expert(model, slot)
    assert all(torch.equal(a, b) for a, b in zip(before.tensors().values(), after.tensors().values()))
