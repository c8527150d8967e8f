"""Tests for moeforge/profile/contribution.py: per-token expert contribution norms, against a direct computation."""

import pytest
import torch
from transformers.activations import ACT2FN

from moeforge.model.experts import ExpertSlot, read_expert
from moeforge.model.families import moe_layers
from moeforge.model.routing import RoutingRecorder
from moeforge.profile.contribution import ContributionRecorder
from tests.model.tiny import TINY, tiny_model


def _expert_output(model, slot: ExpertSlot, x: torch.Tensor) -> torch.Tensor:
    """One expert on rows x, from its weights in nn.Linear orientation: a second code path."""
    w = read_expert(model, slot)
    if model.config.model_type == "gpt_oss":  # clamped SwiGLU with biases (the gpt-oss model card)
        limit, alpha = model.config.swiglu_limit, model.config.swiglu_alpha
        gate = (x @ w.gate.T + w.gate_bias).clamp(max=limit)
        up = (x @ w.up.T + w.up_bias).clamp(-limit, limit)
        return ((up + 1) * gate * torch.sigmoid(gate * alpha)) @ w.down.T + w.down_bias
    act = ACT2FN[model.config.hidden_act]
    return (act(x @ w.gate.T) * (x @ w.up.T)) @ w.down.T


def _experts_inputs(model):
    """Hidden states each MoE layer's block received, flattened [T, H], by layer index."""
    seen, handles = {}, []
    for layer in moe_layers(model):
        decoder_layer = model.model.layers[layer.index]
        block = decoder_layer.feed_forward if model.config.model_type == "llama4_text" else decoder_layer.mlp

        def hook(_m, args, index=layer.index):
            seen[index] = args[0].reshape(-1, args[0].shape[-1])

        handles.append(block.register_forward_pre_hook(hook))
    return seen, handles


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_norms_equal_gate_times_norm_of_each_routed_experts_output(model_type):
    model = tiny_model(model_type)
    x = torch.randint(3, model.config.vocab_size, (2, 7))
    inputs, handles = _experts_inputs(model)
    with RoutingRecorder(model) as routing, ContributionRecorder(model) as contributions, torch.no_grad():
        model(input_ids=x)
    for handle in handles:
        handle.remove()
    trace, norms = routing.pop(), contributions.pop()
    for layer in moe_layers(model):
        ids, weights, hidden = trace.layers[layer.index].ids, trace.layers[layer.index].weights, inputs[layer.index]
        want = torch.zeros(x.numel(), layer.num_experts)
        for e in range(layer.num_experts):
            token, slot = torch.where(ids == e)
            w = weights[token, slot, None]
            if model_type == "llama4_text":  # the gate scales the expert's input
                want[token, e] = _expert_output(model, ExpertSlot(layer.index, e), w * hidden[token]).norm(dim=-1)
            else:
                out = _expert_output(model, ExpertSlot(layer.index, e), hidden[token])
                want[token, e] = (w.abs() * out).norm(dim=-1)
        got = norms[layer.index]
        assert got.shape == (x.numel(), layer.num_experts)
        assert torch.equal(got > 0, want > 0), "non-zero exactly where the router sent the token"
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_type", ["deepseek_v2", "gpt_oss", "llama4_text"])
def test_recording_leaves_the_forward_pass_bit_identical(model_type):
    model = tiny_model(model_type)
    x = torch.randint(3, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        plain = model(input_ids=x).logits
        with ContributionRecorder(model) as contributions:
            recorded = model(input_ids=x).logits
        after = model(input_ids=x).logits
    assert torch.equal(plain, recorded)
    assert torch.equal(plain, after)
    assert contributions.pop() and not contributions.pop(), "pop returns what was seen, then nothing"
    assert all(not layer.experts._forward_hooks for layer in moe_layers(model)), "hooks removed on exit"


def test_pop_concatenates_forward_passes_in_order():
    model = tiny_model("qwen3_moe")
    with ContributionRecorder(model) as contributions, torch.no_grad():
        model(input_ids=torch.randint(3, 96, (1, 5)))
        first = contributions.pop()
        model(input_ids=torch.randint(3, 96, (2, 3)))
        model(input_ids=torch.randint(3, 96, (1, 4)))
        second = contributions.pop()
    assert all(n.shape[0] == 5 for n in first.values())
    assert all(n.shape[0] == 6 + 4 for n in second.values())
