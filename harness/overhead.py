"""What profiling costs: wall time of a plain no_grad forward pass against the same pass profiled.

The ratio profiled ÷ plain is the figure to watch (target ≤ 1.10 for the ESFT profile: token
and gate scores only). Saliency evaluates every routed expert a second time, so it costs about
one more pass through the routed experts. The base-model fingerprint, hashed once per profile
whatever the number of tokens, is left out of both timings.
"""

import logging
import math
import time

import torch

from moeforge.errors import ConfigError
from moeforge.profile.stats import count_routing

log = logging.getLogger(__name__)


def profiling_overhead(model, input_ids: torch.Tensor, *, batch_size: int = 8, repeats: int = 3) -> dict[str, float]:
    """Seconds (best of `repeats`, after one warm-up) for plain, profiled and profiled-with-saliency passes.

    The three runs alternate within each repeat, so drift in machine load affects them alike.
    """
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1 (got {repeats}).")
    tokens = input_ids.numel()
    runs = {
        "plain_s": lambda: _plain(model, input_ids, batch_size),
        "profile_s": lambda: count_routing(model, input_ids, tokens, batch_size=batch_size, saliency=False),
        "profile_saliency_s": lambda: count_routing(model, input_ids, tokens, batch_size=batch_size, saliency=True),
    }
    for run in runs.values():
        run()  # warm-up: allocator, kernels, lazy initialisation
    seconds = {name: math.inf for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name] = min(seconds[name], _seconds(run))
    result = {
        "tokens": float(tokens),
        **seconds,
        "ratio": seconds["profile_s"] / seconds["plain_s"],
        "ratio_saliency": seconds["profile_saliency_s"] / seconds["plain_s"],
    }
    log.info(
        "profiling %s tokens: plain %.3f s, profiled ×%.3f, with saliency ×%.3f",
        f"{tokens:,}", seconds["plain_s"], result["ratio"], result["ratio_saliency"],
    )
    return result


def _plain(model, input_ids: torch.Tensor, batch_size: int) -> None:
    """The same backbone calls profiling makes, with no hooks."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                model.model(input_ids=input_ids[start : start + batch_size].to(device), use_cache=False)
    finally:
        model.train(was_training)


def _seconds(run) -> float:
    _sync()
    start = time.perf_counter()
    run()
    _sync()
    return time.perf_counter() - start


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
