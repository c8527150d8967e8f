import pytest
import torch

from moeforge.errors import ModelError
from moeforge.extract.modules import QuantizedExperts, quantize_experts, quantize_rows
from moeforge.model.experts import ExpertSlot, read_expert, write_expert
from moeforge.model.families import moe_layers
from moeforge.model.routing import RoutingRecorder
from tests.model.tiny import tiny_model


def test_int8_rows_reconstruct_within_half_a_step():
    w = torch.randn(4, 6, 10)
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (4, 6, 1)
    assert ((q.float() * scale - w).abs() <= scale / 2 + 1e-7).all()


@pytest.mark.parametrize("model_type", ["deepseek_v2", "qwen3_moe", "mixtral"])
def test_quantized_model_stays_close_and_keeps_exact_experts_exact(model_type):
    model = tiny_model(model_type)
    layer = moe_layers(model)[0].index
    exact_before = read_expert(model, ExpertSlot(layer, 3))
    x = torch.randint(3, 96, (2, 12))
    with torch.no_grad():
        ref = model(input_ids=x).logits
    quantize_experts(model, {layer: [3]})
    assert all(isinstance(l.experts, QuantizedExperts) for l in moe_layers(model))
    with torch.no_grad():
        out = model(input_ids=x).logits
    assert (out - ref).abs().max() < 1e-2 * ref.abs().max()
    exact_after = read_expert(model, ExpertSlot(layer, 3))
    assert all(torch.equal(a, b) for a, b in zip(exact_before.tensors().values(), exact_after.tensors().values()))
    int8_bytes = sum(b.numel() for n, b in moe_layers(model)[0].experts.named_buffers() if n.endswith("_q"))
    assert int8_bytes == sum(t.numel() for t in (moe_layers(tiny_model(model_type))[0].experts.parameters()))


def test_quantized_experts_refuse_writes():
    model = tiny_model("olmoe")
    quantize_experts(model, {})
    w = read_expert(model, ExpertSlot(0, 1))
    with pytest.raises(ModelError, match="quantized experts are frozen"):
        write_expert(model, ExpertSlot(0, 1), w)


def test_routing_hooks_still_see_quantized_models():
    model = tiny_model("deepseek_v2")
    quantize_experts(model, {})
    with RoutingRecorder(model) as rec, torch.no_grad():
        model(input_ids=torch.randint(3, 96, (1, 7)))
    assert {i: r.ids.shape for i, r in rec.pop().layers.items()} == {1: (7, 2), 2: (7, 2)}


def test_gpt_oss_is_refused():
    with pytest.raises(ModelError, match="fused-layout"):
        quantize_experts(tiny_model("gpt_oss"), {})
