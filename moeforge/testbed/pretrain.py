"""Pre-training loop for the testbed: AdamW, warm-up then cosine decay, a Switch-style balance loss.

HF's DeepSeek classes compute no load-balancing loss (DESIGN.md), so the router's choices are
read through `RoutingRecorder` and the loss of Fedus et al. (2021) is added per MoE layer:
E · Σ_i f_i · P_i, with f_i the share of top-k slots sent to expert i and P_i its mean router
probability.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moeforge.data.packing import row_order
from moeforge.model.routing import RoutingRecorder, RoutingTrace
from moeforge.train.schedule import lr_at


@dataclass(frozen=True)
class StepInfo:
    step: int  # 1-based
    steps: int
    loss: float  # language-model loss of this step's batch
    balance_loss: float
    tokens_per_s: float
    lr: float


StepCallback = Callable[[StepInfo], None]


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
) -> list[StepInfo]:
    """Train every parameter of `model` for `steps` batches drawn in a seeded order."""
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95),
    )
    order = row_order(input_ids.shape[0], steps * batch_size, seed)
    num_experts = model.config.n_routed_experts
    history = []
    with RoutingRecorder(model, keep_logits=True) as recorder:
        for step in range(steps):
            started = time.perf_counter()
            rows = order[step * batch_size : (step + 1) * batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup_steps)
            lm_loss = model(input_ids=input_ids[rows], labels=labels[rows]).loss
            aux = balance_loss(recorder.pop(), num_experts)
            (lm_loss + aux_loss_coef * aux).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            info = StepInfo(
                step=step + 1,
                steps=steps,
                loss=lm_loss.item(),
                balance_loss=aux.item(),
                tokens_per_s=len(rows) * input_ids.shape[1] / (time.perf_counter() - started),
                lr=optimizer.param_groups[0]["lr"],
            )
            history.append(info)
            if on_step is not None:
                on_step(info)
    model.eval()
    return history
