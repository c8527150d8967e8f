"""Token-weighted causal-LM loss over packed batches: the one loss every evaluation uses."""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from moeforge.errors import DataError


@torch.no_grad()
def mean_token_loss(model, input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int = 8,
                    on_batch: Callable[[int, int], object] | None = None) -> float:
    """Mean next-token cross-entropy over every labelled position (labels -100 are skipped).

    Each token counts once, whatever batch it falls in, so the result does not depend on
    `batch_size`. A non-finite loss is returned as is: callers decide what it means.
    `on_batch(rows done, rows in all)` after each batch.
    """
    total, count = 0.0, 0
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size]
        lab = labels[start : start + batch_size]
        logits = model(input_ids=ids).logits[:, :-1].float()  # [B, L-1, V]
        target = lab[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum").item()
        count += int((target != -100).sum())
        if on_batch is not None:
            on_batch(min(start + batch_size, input_ids.shape[0]), input_ids.shape[0])
    if count == 0:
        raise DataError("no labelled tokens to evaluate (every label is -100).")
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(loss)
