"""The statistics validators decide by: a paired test of a loss gain, and a two-sample test of shard evidence.

Both are one-sided tests from scipy.stats over per-row losses, so the unit of evidence is a
held-out (or train) row, never a batch a miner could influence by its size: the gain's is a paired
Student t-test; the shard evidence's a Mann-Whitney U test, a rank test, which on the attack
bench's evidence job (20 trials) kept 92% of honest submissions at level 0.05 where Welch's t-test
had kept 86% (and 74% against 60% at 0.01; README "Attacks"). A test with no
spread at all (every difference equal) is decided by the sign of that difference: p = 0 when it
is positive, 1 otherwise. Fewer than two rows can never be significant (p = 1).
"""

import math
from dataclasses import dataclass

import torch
from scipy import stats


@dataclass(frozen=True)
class Gain:
    mean: float  # token-weighted mean gain, nats per token (loss without − loss with)
    p_value: float  # one-sided: the chance of a mean row gain at least this large if the delta did nothing

    def significant(self, level: float) -> bool:
        return self.mean > 0 and self.p_value < level


def paired_gain(before_sums: torch.Tensor, after_sums: torch.Tensor, tokens: torch.Tensor) -> Gain:
    """The gain from `before` to `after` over the same rows (per-row summed losses), tested row by row."""
    if before_sums.shape != after_sums.shape or before_sums.shape != tokens.shape:
        raise ValueError(f"paired rows differ in number: {tuple(before_sums.shape)}, {tuple(after_sums.shape)}, {tuple(tokens.shape)}")
    diff = (before_sums - after_sums).double()
    total = int(tokens.sum())
    mean = float(diff.sum()) / total if total else 0.0
    return Gain(mean, _one_sided_p(diff.numpy()))


def greater_p(x: torch.Tensor, y: torch.Tensor) -> float:
    """One-sided Mann-Whitney U p-value that `x` is stochastically greater than `y` (two independent samples)."""
    if x.numel() < 2 or y.numel() < 2:
        return 1.0
    a, b = x.double().numpy(), y.double().numpy()
    if a.std() == 0 and b.std() == 0:
        return 0.0 if a.mean() > b.mean() else 1.0
    p = float(stats.mannwhitneyu(a, b, alternative="greater").pvalue)
    return p if math.isfinite(p) else 1.0


def _one_sided_p(diff) -> float:
    if diff.size < 2:
        return 1.0
    if diff.std() == 0:
        return 0.0 if diff.mean() > 0 else 1.0
    p = float(stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue)
    return p if math.isfinite(p) else 1.0
