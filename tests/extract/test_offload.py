import pytest
import torch

from moeforge.errors import ModelError
from moeforge.extract.offload import OffloadedExperts, offload_experts
from moeforge.extract.package import held_bytes, reduce_for_mode
from moeforge.model.experts import ExpertSlot, read_expert
from moeforge.model.families import moe_layers
from moeforge.train.trainable import TRAINABLE_FAMILIES, attach_trainable, detach_trainable
from tests.model.tiny import tiny_model

FUSED = [name for name in TRAINABLE_FAMILIES if name in ("deepseek_v2", "deepseek_v3", "qwen2_moe", "qwen3_moe", "olmoe", "mixtral")]


def _step(model, ids, slots, *, checkpointing=False):
    """Logits and the trainable experts' gradients of one training forward and backward."""
    trainable = attach_trainable(model, slots)
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    out = model(input_ids=ids, labels=ids, use_cache=False)
    out.loss.backward()
    grads = [p.grad.clone() for p in trainable.parameters()]
    detach_trainable(model, trainable, merge=False)
    return out.logits.detach(), grads


def _slots(model):
    return [ExpertSlot(layer.index, e) for layer in moe_layers(model) for e in (0, 5)]


@pytest.mark.parametrize("implementation", ["grouped_mm", "eager"])
@pytest.mark.parametrize("family", FUSED)
def test_offload_logits_and_gradients_equal_full_mode_bit_for_bit(family, implementation):
    ids = torch.randint(3, 96, (3, 24), generator=torch.Generator().manual_seed(1))
    results = []
    for mode in ("full", "offload"):
        model = tiny_model(family)
        model.config._experts_implementation = implementation
        reduce_for_mode(model, mode, _slots(model))
        results.append(_step(model, ids, _slots(model)))
    (full_logits, full_grads), (off_logits, off_grads) = results
    assert torch.equal(full_logits, off_logits)
    assert all(torch.equal(a, b) for a, b in zip(full_grads, off_grads, strict=True))
    assert any(g.abs().sum() > 0 for g in off_grads)  # the comparison is of real gradients


def test_offload_with_activation_checkpointing_is_still_exact():
    ids = torch.randint(3, 96, (2, 32), generator=torch.Generator().manual_seed(2))
    full = _step(tiny_model("deepseek_v2"), ids, _slots(tiny_model("deepseek_v2")))
    model = tiny_model("deepseek_v2")
    reduce_for_mode(model, "offload", [])
    off = _step(model, ids, _slots(model), checkpointing=True)
    assert torch.equal(full[0], off[0])
    assert all(torch.equal(a, b) for a, b in zip(full[1], off[1], strict=True))


def test_the_device_holds_no_routed_expert_and_reads_them_from_host():
    full = tiny_model("qwen3_moe")
    model = tiny_model("qwen3_moe")
    offload_experts(model, pin=False)
    routed = sum(l.experts.gate_up_proj.numel() + l.experts.down_proj.numel() for l in moe_layers(full)) * 4
    assert held_bytes(model) == held_bytes(full) - routed
    assert all(isinstance(l.experts, OffloadedExperts) for l in moe_layers(model))
    assert not any("experts.gate_up_proj" in name for name in model.state_dict())
    slot = ExpertSlot(moe_layers(model)[0].index, 3)
    assert all(torch.equal(a, b) for a, b in zip(read_expert(model, slot).tensors().values(),
                                                  read_expert(full, slot).tensors().values(), strict=True))


def test_the_backward_pass_fetches_saved_weights_again_instead_of_keeping_them():
    model = tiny_model("deepseek_v2")
    offload_experts(model, pin=False)
    trainable = attach_trainable(model, [ExpertSlot(1, 0)])  # layer 1 trains: layer 2's backward needs its weights
    ids = torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(3))
    out = model(input_ids=ids, labels=ids, use_cache=False)
    last = model.model.layers[2].mlp.experts
    forward = last.fetched_bytes
    assert forward > 0
    out.loss.backward()
    assert last.fetched_bytes > forward  # unpacked from host memory, not held since the forward
    assert trainable.parameters()[0].grad.abs().sum() > 0


def test_a_routing_outside_the_experts_is_refused():
    model = tiny_model("mixtral")
    offload_experts(model, pin=False)
    experts = moe_layers(model)[0].experts
    hidden = torch.zeros(2, 32)
    with pytest.raises(ModelError, match="outside 0..7"):
        experts(hidden, torch.tensor([[0, 8], [1, 2]]), torch.ones(2, 2))


def test_offload_needs_a_fused_layout():
    model = tiny_model("gpt_oss")
    with pytest.raises(ModelError, match="fused-layout"):
        offload_experts(model)


@pytest.mark.gpu
def test_on_cuda_offload_matches_full_mode_within_bf16_tolerance():
    ids = torch.randint(3, 96, (2, 32), generator=torch.Generator().manual_seed(4)).cuda()
    full = tiny_model("deepseek_v2").to(torch.bfloat16).cuda()
    model = tiny_model("deepseek_v2").to(torch.bfloat16)
    offload_experts(model)
    model.cuda()
    assert moe_layers(model)[0].experts.gate_up_proj.is_pinned()
    with torch.no_grad():
        a, b = full(input_ids=ids).logits.float(), model(input_ids=ids).logits.float()
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_device_never_holds_more_than_one_layers_working_set(checkpointing):
    model = tiny_model("deepseek_v2")
    meter = offload_experts(model, pin=False)
    layers = moe_layers(model)
    trainable = attach_trainable(model, [ExpertSlot(layers[0].index, 0)])  # every later layer's backward needs its weights
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    ids = torch.randint(3, 96, (4, 32), generator=torch.Generator().manual_seed(5))
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    one_layer = max(block.experts.fused.largest_fetch_bytes if hasattr(block.experts, "fused") else block.experts.largest_fetch_bytes
                    for block in (model.model.layers[l.index].mlp for l in layers))
    assert one_layer > 0 and sum(l.experts.fetched_bytes for l in moe_layers(model) if hasattr(l.experts, "fetched_bytes")) > one_layer
    assert 0 < meter.peak <= one_layer
    assert meter.live == 0  # nothing left on the device after the step
    assert trainable.parameters()[0].grad is not None


def test_prefetch_guesses_the_next_layers_experts_and_changes_nothing():
    ids = torch.randint(3, 96, (3, 24), generator=torch.Generator().manual_seed(6))
    full = _step(tiny_model("qwen3_moe"), ids, _slots(tiny_model("qwen3_moe")))
    model = tiny_model("qwen3_moe")
    meter = offload_experts(model, pin=False, prefetch=True)
    layers = moe_layers(model)
    prefetcher = layers[0].experts.prefetcher
    first = _step(model, ids, _slots(model))  # nothing to guess from yet
    assert prefetcher.hits == 0
    second = _step(model, ids, _slots(model))  # the same rows: every guess covers the routing
    assert prefetcher.hits == len(layers) - 1 and prefetcher.misses == 0
    for got in (first, second):
        assert torch.equal(full[0], got[0]) and all(torch.equal(a, b) for a, b in zip(full[1], got[1], strict=True))
    other = torch.randint(3, 96, (1, 2), generator=torch.Generator().manual_seed(7))  # 2 tokens: a guess of more experts
    with torch.no_grad():
        model(input_ids=other)
    one_layer = max(l.experts.largest_fetch_bytes for l in layers)
    assert meter.peak <= 2 * one_layer  # the layer computing and the guess for the next


def test_prefetch_fetches_nothing_ahead_in_a_checkpointed_backward_pass():
    model = tiny_model("deepseek_v2")
    offload_experts(model, pin=False, prefetch=True)
    prefetcher = moe_layers(model)[0].experts.prefetcher
    starts = []
    real_start = prefetcher.start
    prefetcher.start = lambda layer, ids, device: (starts.append(layer), real_start(layer, ids, device))
    ids = torch.randint(3, 96, (2, 16), generator=torch.Generator().manual_seed(8))
    _step(model, ids, _slots(model), checkpointing=True)
    before = len(starts)
    _step(model, ids, _slots(model), checkpointing=True)
    assert len(starts) - before == len(moe_layers(model)) - 1  # one guess per forward layer boundary, none while recomputing
