"""Token-weighted causal-LM loss over packed batches: the one loss every evaluation uses."""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from moeforge.errors import ConfigError, DataError


@torch.no_grad()
def row_losses(model, input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int = 8,
               on_batch: Callable[[int, int], object] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token cross-entropy per row, float64 [N]; labelled positions per row, int64 [N]).

    The per-row parts of `mean_token_loss`, for tests that pair rows (scoring's significance test).
    """
    sums, counts = [], []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size]
        target = labels[start : start + batch_size, 1:]
        logits = model(input_ids=ids).logits[:, :-1].float()  # [B, L-1, V]
        per_token = F.cross_entropy(logits.transpose(1, 2), target.to(logits.device), ignore_index=-100, reduction="none")
        sums.append(per_token.double().sum(dim=1).cpu())
        counts.append((target != -100).sum(dim=1).cpu())
        if on_batch is not None:
            on_batch(min(start + batch_size, input_ids.shape[0]), input_ids.shape[0])
    return torch.cat(sums), torch.cat(counts).long()


def mean_token_loss(model, input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int = 8,
                    on_batch: Callable[[int, int], object] | None = None) -> float:
    """Mean next-token cross-entropy over every labelled position (labels -100 are skipped).

    Each token counts once, whatever batch it falls in, so the result does not depend on
    `batch_size`. A non-finite loss is returned as is: callers decide what it means.
    `on_batch(rows done, rows in all)` after each batch.
    """
    sums, counts = row_losses(model, input_ids, labels, batch_size, on_batch)
    count = int(counts.sum())
    if count == 0:
        raise DataError("no labelled tokens to evaluate (every label is -100).")
    return float(sums.sum()) / count


def chunked_lm_loss(model, input_ids: torch.Tensor, labels: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """The training loss `model(input_ids, labels=labels).loss` is, without every position's logits at once.

    Mean next-token cross-entropy over the labelled positions. The LM head and the cross-entropy run
    on `chunk_tokens` positions at a time, each chunk recomputed in the backward pass, so a step
    holds chunk × vocab logits instead of tokens × vocab (2 GiB at DeepSeek-V2-Lite's 102,400-token
    vocabulary and 2,048 tokens). A model that adds its router's auxiliary loss to `.loss` is refused:
    this loss would leave it out.
    """
    if chunk_tokens < 1:
        raise ConfigError(f"loss_chunk_tokens {chunk_tokens}: must be at least 1 (or 0 for the model's own loss).")
    if getattr(model.config, "output_router_logits", False):
        raise ConfigError(f"{model.config.model_type}: output_router_logits adds the router's auxiliary loss to the model's "
                          "loss, which the chunked loss leaves out; set loss_chunk_tokens 0.")
    hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    flat = hidden.reshape(-1, hidden.shape[-1])
    target = labels[:, 1:].reshape(-1).to(flat.device)
    head = model.get_output_embeddings()

    def summed(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), t, ignore_index=-100, reduction="sum")

    total = sum(checkpoint(summed, flat[i : i + chunk_tokens], target[i : i + chunk_tokens], use_reentrant=False)
                for i in range(0, target.numel(), chunk_tokens))
    return total / (target != -100).sum()


def perplexity(loss: float) -> float:
    return math.exp(loss)
