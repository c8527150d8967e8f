"""Routing profiles built from hand-made counts, for tests that need no model."""

import random

from moeforge.profile.profile_file import RoutingProfile


def make_profile(
    counts: dict[int, list[int]], *, top_k: int = 2, saliency: bool = True, seed: int = 0
) -> RoutingProfile:
    """A consistent profile whose token scores follow `counts` (each layer must sum to the same tokens × top_k).

    Gate and saliency sums are drawn at random (seeded), so the three scores rank experts differently.
    """
    rng = random.Random(seed)
    layers = sorted(counts)
    num_experts = len(counts[layers[0]])
    tokens = sum(counts[layers[0]]) // top_k
    gate_sums = {l: [c * rng.uniform(0.1, 1.0) for c in counts[l]] for l in layers}
    saliency_sums = {l: [c * rng.uniform(0.1, 3.0) for c in counts[l]] for l in layers}

    def normalised(values):
        total = sum(values)
        return tuple(v / total for v in values)

    def means(l):
        return [s / c if c else 0.0 for s, c in zip(saliency_sums[l], counts[l])]

    return RoutingProfile(
        model_type="deepseek_v2",
        base_fingerprint="ab" * 32,
        data_fingerprint="cd" * 32,
        tokens=tokens,
        top_k=top_k,
        num_experts=num_experts,
        layers=tuple(layers),
        token={l: normalised(counts[l]) for l in layers},
        gate={l: normalised(gate_sums[l]) for l in layers},
        saliency={l: normalised(means(l)) for l in layers} if saliency else None,
        counts={l: tuple(counts[l]) for l in layers},
        gate_sums={l: tuple(gate_sums[l]) for l in layers},
        saliency_sums={l: tuple(saliency_sums[l]) for l in layers} if saliency else None,
    )


def random_profile(
    layers: range, num_experts: int, *, tokens: int = 1000, top_k: int = 2, seed: int = 0
) -> RoutingProfile:
    """A profile of skewed random routing: a few experts per layer take most tokens."""
    rng = random.Random(seed)
    counts = {}
    for layer in layers:
        weights = [rng.paretovariate(1.2) for _ in range(num_experts)]
        picks = rng.choices(range(num_experts), weights=weights, k=tokens * top_k)
        counts[layer] = [picks.count(e) for e in range(num_experts)]
    return make_profile(counts, top_k=top_k, seed=seed)
