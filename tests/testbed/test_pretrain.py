import torch
from transformers import AutoModelForCausalLM

from moeforge.model.routing import LayerRouting, RoutingTrace
from moeforge.testbed.config import TestbedConfig, deepseek_config
from moeforge.testbed.pretrain import balance_loss, pretrain


def _trace(ids: torch.Tensor, logits: torch.Tensor) -> RoutingTrace:
    return RoutingTrace(layers={1: LayerRouting(ids=ids, weights=torch.ones_like(ids, dtype=torch.float), logits=logits)})


def test_balance_loss_is_one_when_balanced_and_higher_when_collapsed():
    experts, tokens = 4, 8
    uniform = torch.zeros(tokens, experts)
    balanced = torch.arange(tokens).remainder(experts).reshape(-1, 1)
    assert torch.isclose(balance_loss(_trace(balanced, uniform), experts), torch.tensor(1.0))
    collapsed_logits = torch.zeros(tokens, experts)
    collapsed_logits[:, 0] = 5.0
    collapsed = torch.zeros(tokens, 1, dtype=torch.long)
    assert balance_loss(_trace(collapsed, collapsed_logits), experts) > 3.0


def test_pretraining_lowers_the_loss_and_trains_routers():
    cfg = TestbedConfig(vocab_size=300, hidden_size=32, num_layers=2, num_experts=4, top_k=2, moe_intermediate_size=8,
                        num_heads=2, seq_len=32)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(deepseek_config(cfg, eos_id=0, pad_id=1))
    router_before = model.model.layers[1].mlp.gate.weight.detach().clone()
    pattern = torch.arange(32).remainder(7) + 10  # a learnable repeating sequence
    ids = pattern.repeat(16, 1)
    history = pretrain(model, ids, ids.clone(), steps=30, batch_size=4, lr=1e-2, warmup_steps=2, weight_decay=0.0,
                       aux_loss_coef=0.01, seed=0).history
    assert len(history) == 30 and history[-1].step == 30
    assert all(set(h.terms) == {"balance"} and 0 < h.terms["balance"] < 4 for h in history)  # 1 when balanced, E collapsed
    assert history[-1].loss < history[0].loss / 2
    assert not torch.equal(router_before, model.model.layers[1].mlp.gate.weight)
    assert not model.training
