"""Pre-training for the testbed: every parameter through the one training loop, plus a Switch-style balance loss.

HF's DeepSeek classes compute no load-balancing loss (DESIGN.md), so the router's choices are
read through `RoutingRecorder` and the loss of Fedus et al. (2021) is added per MoE layer as a
`LossTerm` of `train/loop.py`: E · Σ_i f_i · P_i, with f_i the share of top-k slots sent to
expert i and P_i its mean router probability. AdamW, warm-up then cosine decay, clipping at 1.0:
the loop's own.
"""

import torch

from moeforge.data.packing import Packed
from moeforge.data.formatting import IGNORE_INDEX
from moeforge.model.routing import RoutingRecorder, RoutingTrace
from moeforge.train.config import TrainConfig
from moeforge.train.loop import LossTerm, train
from moeforge.train.metrics import StepCallback, TrainResult

BALANCE = "balance"  # the term's name in each step's `terms`


def balance_loss(trace: RoutingTrace, num_experts: int) -> torch.Tensor:
    """Switch-Transformer load-balancing loss, averaged over MoE layers (1.0 when perfectly balanced)."""
    losses = []
    for routing in trace.layers.values():
        probs = routing.logits.float().softmax(dim=-1)  # [T, E]
        share = torch.bincount(routing.ids.reshape(-1), minlength=num_experts).float() / routing.ids.numel()
        losses.append(num_experts * (share * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def pretrain(
    model,
    input_ids: torch.Tensor,  # [N, L] packed training rows
    labels: torch.Tensor,  # [N, L]
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    weight_decay: float,
    aux_loss_coef: float,
    seed: int,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train every parameter of `model` for `steps` batches drawn in a seeded order; the model is left in eval mode."""
    cfg = TrainConfig(lr=lr, steps=steps, batch_size=batch_size, warmup_steps=warmup_steps, weight_decay=weight_decay,
                      seed=seed, checkpoint_every=0)
    packed = Packed(input_ids=input_ids, labels=labels, n_tokens=int(input_ids.numel()),
                    n_loss_tokens=int((labels != IGNORE_INDEX).sum()))
    num_experts = model.config.n_routed_experts
    with RoutingRecorder(model, keep_logits=True) as recorder:
        balance = LossTerm(BALANCE, lambda: balance_loss(recorder.pop(), num_experts), aux_loss_coef)
        result = train(model, list(model.parameters()), packed, cfg, on_step=on_step, terms=[balance])
    model.eval()
    return result
