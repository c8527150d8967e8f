import torch

from moeforge.model.families import moe_layers
from moeforge.model.routing import RoutingRecorder
from tests.model.tiny import tiny_model


def _routing_seen_by_experts(model):
    """A second code path: what each experts module actually received (Llama-4: top-k of its logits)."""
    seen, handles = {}, []
    for layer in moe_layers(model):
        if model.config.model_type == "llama4_text":
            def hook(_m, _inp, out, index=layer.index, k=layer.top_k):
                scores, logits = out
                ids = logits.topk(k, dim=-1).indices
                seen[index] = (ids, torch.sigmoid(logits.float()).gather(1, ids))
            handles.append(layer.router.register_forward_hook(hook))
        else:
            def hook(_m, args, index=layer.index):
                _, ids, weights = args
                seen[index] = (ids, weights)
            handles.append(layer.experts.register_forward_pre_hook(hook))
    return seen, handles


def _sorted_pairs(ids, weights):
    order = ids.argsort(dim=-1)
    return ids.gather(-1, order), weights.float().gather(-1, order)


def test_recorded_choices_equal_the_models_own_routing(model_type):
    model = tiny_model(model_type)
    x = torch.randint(3, model.config.vocab_size, (2, 11))
    seen, handles = _routing_seen_by_experts(model)
    with RoutingRecorder(model) as rec, torch.no_grad():
        model(input_ids=x)
    for h in handles:
        h.remove()
    trace = rec.pop()
    assert sorted(trace.layers) == [layer.index for layer in moe_layers(model)]
    for index, routing in trace.layers.items():
        assert routing.ids.shape == (x.numel(), moe_layers(model)[0].top_k)
        want_ids, want_w = _sorted_pairs(*seen[index])
        got_ids, got_w = _sorted_pairs(routing.ids, routing.weights)
        assert torch.equal(got_ids, want_ids.long())
        torch.testing.assert_close(got_w, want_w)


def test_recorder_concatenates_forwards_and_pop_clears():
    model = tiny_model("deepseek_v3")
    with RoutingRecorder(model) as rec, torch.no_grad():
        model(input_ids=torch.randint(0, 96, (1, 5)))
        model(input_ids=torch.randint(0, 96, (3, 4)))
        first = rec.pop()
        model(input_ids=torch.randint(0, 96, (1, 2)))
        second = rec.pop()
    assert all(r.ids.shape[0] == 5 + 12 for r in first.layers.values())
    assert all(r.ids.shape[0] == 2 for r in second.layers.values())


def test_hooks_are_removed_on_exit():
    model = tiny_model("olmoe")
    with RoutingRecorder(model) as rec:
        pass
    model(input_ids=torch.randint(0, 96, (1, 4)))
    assert rec.pop().layers == {}


def test_kept_logits_carry_gradients_to_the_router():
    model = tiny_model("deepseek_v2").train()
    with RoutingRecorder(model, keep_logits=True) as rec:
        model(input_ids=torch.randint(0, 96, (2, 6)))
    routing = next(iter(rec.pop().layers.values()))
    assert routing.logits.shape == (12, 8)
    routing.logits.softmax(-1).pow(2).sum().backward()
    assert moe_layers(model)[0].router.weight.grad.abs().sum() > 0
