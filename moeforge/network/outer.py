"""The outer optimizer: the round's merged update applied as a pseudo-gradient, Nesterov SGD as in DiLoCo.

DiLoCo (arXiv 2311.08105) and OpenDiLoCo feed the averaged worker update to an outer Nesterov
SGD. Written with the update Δ (the merged delta, the negative of DiLoCo's pseudo-gradient) and
the momentum buffer M (the negative of torch.optim.SGD's `momentum_buffer`):

    M' = μ·M + Δ
    θ' = θ + lr·(Δ + μ·M')  =  θ + lr·μ²·M  +  lr·(1 + μ)·Δ

so `lr` 1 with `μ` 0 is plain averaging, exactly what the network did before (the step is then Δ
itself, not a rescaled copy, so the states are bit-identical). The step has two parts: the
**free step** lr·μ²·M, which the network takes whatever anyone submits this round, and the
submission's part lr·(1 + μ)·Δ. Proof-of-Loss scores each delta against the free state
θ + lr·μ²·M with the delta scaled by lr·(1 + μ) (`score_scale`), so a replay or extrapolation of
public updates (which the momentum already carries) earns about nothing.

The general guard may shrink a step by a scale s ≤ 1 (merge.choose_state); the whole optimizer
step shrinks with it, momentum included: θ' = θ + s·(lr·μ²·M + lr·(1 + μ)·Δ), M' = s·(μ·M + Δ).
A round that adopts nothing keeps θ and M as they were. M is published with the state
(state.pack_state), so every validator with the same inputs computes the same next state, bit for
bit, and a restarted one continues exactly. All arithmetic is `slices.linear_combination`: float64,
stored in the dtype of a delta for the base.
"""

from dataclasses import dataclass

from moeforge.model.slices import ExpertSlice, linear_combination


@dataclass(frozen=True)
class OuterOptimizer:
    lr: float = 1.0
    momentum: float = 0.0

    @classmethod
    def of(cls, job) -> "OuterOptimizer":
        return cls(lr=job.outer_lr, momentum=job.outer_momentum)

    @property
    def plain(self) -> bool:
        """Plain averaging: the step is the update itself and no momentum is kept."""
        return self.lr == 1.0 and self.momentum == 0.0

    @property
    def keeps_momentum(self) -> bool:
        return self.momentum > 0

    @property
    def score_scale(self) -> float:
        """What a submission's delta is multiplied by when it is scored against the free state."""
        return self.lr * (1 + self.momentum)

    def free_step(self, reference: ExpertSlice, momentum: ExpertSlice | None) -> ExpertSlice | None:
        """lr·μ²·M, or None when it is zero (no momentum)."""
        if not self.keeps_momentum or momentum is None:
            return None
        return linear_combination(reference, [(self.lr * self.momentum**2, momentum)])

    def step(self, reference: ExpertSlice, momentum: ExpertSlice | None, update: ExpertSlice, scale: float = 1.0) -> ExpertSlice:
        """The delta θ' − θ for `update` (Δ) shrunk by `scale`: s·(lr·μ²·M + lr·(1 + μ)·Δ)."""
        if self.plain and scale == 1.0:
            return update
        terms = [(scale * self.score_scale, update)]
        if self.keeps_momentum and momentum is not None:
            terms.append((scale * self.lr * self.momentum**2, momentum))
        return linear_combination(reference, terms)

    def next_momentum(self, reference: ExpertSlice, momentum: ExpertSlice | None, update: ExpertSlice,
                      scale: float = 1.0) -> ExpertSlice | None:
        """M' = s·(μ·M + Δ), or None when the optimizer keeps no momentum."""
        if not self.keeps_momentum:
            return None
        terms = [(scale, update)] + ([(scale * self.momentum, momentum)] if momentum is not None else [])
        return linear_combination(reference, terms)
