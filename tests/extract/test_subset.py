import pytest
import torch

from moeforge.errors import ModelError
from moeforge.extract.subset import restrict_to_subset
from moeforge.model.experts import ExpertSlot, read_expert
from moeforge.model.families import moe_layers
from moeforge.model.routing import RoutingRecorder
from tests.model.tiny import tiny_model

SOFTMAX_FAMILIES = ["deepseek_v2", "qwen2_moe", "qwen3_moe", "olmoe", "mixtral"]


@pytest.mark.parametrize("model_type", SOFTMAX_FAMILIES)
def test_keeping_every_expert_reproduces_the_full_model(model_type):
    model = tiny_model(model_type)
    x = torch.randint(3, 96, (2, 10))
    with torch.no_grad():
        ref = model(input_ids=x).logits
    restrict_to_subset(model, {l.index: list(range(l.num_experts)) for l in moe_layers(model)})
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, ref, rtol=1e-4, atol=1e-5)


def test_kept_experts_keep_their_full_softmax_gate_values():
    model = tiny_model("deepseek_v2")  # softmax, top-k not renormalised
    x = torch.randint(3, 96, (1, 16))
    with RoutingRecorder(model, keep_logits=True) as rec, torch.no_grad():
        model(input_ids=x)
    full = rec.pop()
    kept = {l.index: [0, 1, 2, 3, 4] for l in moe_layers(model)}
    restrict_to_subset(model, kept)
    with RoutingRecorder(model) as rec, torch.no_grad():
        model(input_ids=x)
    sub = rec.pop()
    layer = moe_layers(model)[0].index  # the first MoE layer sees identical inputs
    probs = full.layers[layer].logits.softmax(-1)
    assert set(sub.layers[layer].ids.unique().tolist()) <= set(kept[layer])
    torch.testing.assert_close(sub.layers[layer].weights, probs.gather(1, sub.layers[layer].ids))


def test_subset_holds_only_kept_experts_and_reads_them_by_global_id():
    model = tiny_model("qwen3_moe")
    before = read_expert(model, ExpertSlot(0, 6))
    restrict_to_subset(model, {l.index: [1, 2, 6] for l in moe_layers(model)})
    after = read_expert(model, ExpertSlot(0, 6))
    assert torch.equal(before.gate, after.gate) and torch.equal(before.down, after.down)
    assert moe_layers(model)[0].experts.gate_up.shape[0] == 3
    with pytest.raises(ModelError, match="expert 5 is not held"):
        read_expert(model, ExpertSlot(0, 5))


def test_subset_needs_top_k_experts_in_every_layer():
    model = tiny_model("olmoe")
    with pytest.raises(ModelError, match="at least top_k"):
        restrict_to_subset(model, {l.index: [0] for l in moe_layers(model)})
    with pytest.raises(ModelError, match="keeps no experts in MoE layers"):
        restrict_to_subset(tiny_model("olmoe"), {0: [0, 1]})


def test_sigmoid_routers_are_refused():
    with pytest.raises(ModelError, match="softmax-then-top-k"):
        restrict_to_subset(tiny_model("deepseek_v3"), {})
