import pytest
import torch

from moeforge.errors import ConfigError, ModelError
from moeforge.model.experts import ExpertSlot, read_expert
from moeforge.model.families import moe_layers
from moeforge.model.fingerprint import model_fingerprint
from moeforge.train.trainable import TRAINABLE_FAMILIES, SplitExperts, attach_trainable, detach_trainable
from tests.model.tiny import tiny_model

FUSED = ["deepseek_v2", "deepseek_v3", "qwen2_moe", "qwen3_moe", "olmoe", "mixtral"]


def _slots(model) -> list[ExpertSlot]:
    return [ExpertSlot(layer.index, e) for layer in moe_layers(model) for e in (0, 3, 6)]


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 96, (2, 24), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type", FUSED)
def test_wrapped_forward_equals_the_original_and_only_selected_experts_get_gradients(model_type):
    model = tiny_model(model_type)
    ids = _ids()
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    trainable = attach_trainable(model, _slots(model))
    logits = model(input_ids=ids).logits
    assert torch.allclose(logits, reference, atol=1e-5, rtol=0)
    logits.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.parameters())
    assert not any(p.grad is not None for p in model.parameters() if not any(p is q for q in trainable.parameters()))
    detach_trainable(model, trainable, merge=False)


def test_selected_experts_are_computed_from_the_new_parameters():
    model = tiny_model("deepseek_v2")
    ids = _ids()
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        trainable = attach_trainable(model, [ExpertSlot(1, 0), ExpertSlot(2, 3)])
        for p in trainable.parameters():
            p.mul_(3.0)
        changed = model(input_ids=ids).logits
    assert (changed - reference).abs().max() > 1e-4
    # the fused tensors still hold the base values
    assert isinstance(model.model.layers[1].mlp.experts, SplitExperts)
    assert torch.equal(model.model.layers[1].mlp.experts.fused.down_proj[0] * 3.0, trainable.weights[ExpertSlot(1, 0)].down)


def test_detach_without_merge_returns_the_bit_identical_model_and_restores_flags():
    model = tiny_model("qwen3_moe")
    model.lm_head.weight.requires_grad_(False)
    fingerprint = model_fingerprint(model)
    trainable = attach_trainable(model, _slots(model))
    assert not any(p.requires_grad for name, p in model.named_parameters() if ".selected." not in name)
    with torch.no_grad():
        for p in trainable.parameters():
            p.add_(1.0)
    detach_trainable(model, trainable, merge=False)
    assert model_fingerprint(model) == fingerprint
    assert not model.lm_head.weight.requires_grad
    assert all(p.requires_grad for name, p in model.named_parameters() if name != "lm_head.weight")
    with pytest.raises(ModelError, match="detached twice"):
        detach_trainable(model, trainable, merge=False)


def test_detach_with_merge_writes_the_trained_experts_into_the_fused_tensors():
    model = tiny_model("mixtral")
    slot = ExpertSlot(1, 5)
    before = read_expert(model, slot)
    other = read_expert(model, ExpertSlot(1, 4))
    trainable = attach_trainable(model, [slot])
    with torch.no_grad():
        trainable.weights[slot].up.add_(0.5)
    snapshot = trainable.to_slice("fp")
    detach_trainable(model, trainable, merge=True)
    after = read_expert(model, slot)
    assert torch.equal(after.up, before.up + 0.5) and torch.equal(after.gate, before.gate)
    assert torch.equal(after.up, snapshot.weights[slot].up)
    assert torch.equal(read_expert(model, ExpertSlot(1, 4)).up, other.up)


def test_to_slice_is_a_copy_of_the_current_values():
    model = tiny_model("olmoe")
    slot = ExpertSlot(0, 2)
    trainable = attach_trainable(model, [slot])
    piece = trainable.to_slice("abc")
    with torch.no_grad():
        trainable.weights[slot].gate.add_(1.0)
    assert piece.kind == "experts" and piece.base_fingerprint == "abc" and piece.slots == [slot]
    assert torch.equal(piece.weights[slot].gate + 1.0, trainable.weights[slot].gate)
    assert not piece.weights[slot].gate.requires_grad
    detach_trainable(model, trainable, merge=False)


@pytest.mark.parametrize("slot, culprit", [(ExpertSlot(0, 1), "layer 0 is not a MoE layer"), (ExpertSlot(2, 99), "expert 99")])
def test_a_nonexistent_slot_is_refused_with_nothing_changed(slot, culprit):
    model = tiny_model("deepseek_v2")
    fingerprint = model_fingerprint(model)
    modules = [type(m) for m in model.modules()]
    with pytest.raises(ModelError, match=culprit):
        attach_trainable(model, [ExpertSlot(1, 0), slot])
    assert model_fingerprint(model) == fingerprint
    assert [type(m) for m in model.modules()] == modules
    assert all(p.requires_grad for p in model.parameters())


def test_an_empty_selection_is_a_config_error():
    with pytest.raises(ConfigError, match="at least one"):
        attach_trainable(tiny_model("olmoe"), [])


@pytest.mark.parametrize("model_type", ["gpt_oss", "llama4_text"])
def test_unwrappable_families_are_refused_naming_the_supported_ones(model_type):
    model = tiny_model(model_type)
    slot = ExpertSlot(moe_layers(model)[0].index, 0)
    with pytest.raises(ModelError, match="supported families: " + ", ".join(TRAINABLE_FAMILIES)):
        attach_trainable(model, [slot])
    assert all(p.requires_grad for p in model.parameters())


def test_attaching_twice_to_the_same_layer_is_refused():
    model = tiny_model("olmoe")
    trainable = attach_trainable(model, [ExpertSlot(1, 1)])
    with pytest.raises(ModelError):
        attach_trainable(model, [ExpertSlot(1, 2)])
    detach_trainable(model, trainable, merge=False)


def test_a_bf16_model_trains_float32_master_copies_and_computes_the_same_function():
    model = tiny_model("deepseek_v2").to(torch.bfloat16)
    ids = _ids()
    with torch.no_grad():
        reference = model(input_ids=ids).logits.float()
    trainable = attach_trainable(model, _slots(model))
    assert all(p.dtype == torch.float32 for p in trainable.parameters())
    logits = model(input_ids=ids).logits
    assert torch.allclose(logits.float(), reference, atol=2e-2, rtol=0)
    logits.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.parameters())
    detach_trainable(model, trainable, merge=False)
