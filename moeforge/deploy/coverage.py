"""Which experts a right-sized export keeps: coverage of the domain's routing on the fine-tuned model.

ESFT trains a few experts, but a deployable subset must hold the experts the domain is *routed* to
(DESIGN.md "Deployment"). Per MoE layer, the smallest top set of experts by score whose share
reaches `coverage`; stock runtimes need one expert count in every layer, so K is the largest of
those counts (and at least top-k), and every layer keeps its K highest-scoring experts.
"""

from dataclasses import dataclass

from moeforge.errors import ConfigError
from moeforge.profile.profile_file import RoutingProfile


@dataclass(frozen=True)
class KeptExperts:
    k: int
    kept: dict[int, tuple[int, ...]]  # MoE layer → original expert ids kept, ascending (new id = position)
    needed: dict[int, int]  # per layer, experts needed to reach the coverage
    covered: dict[int, float]  # per layer, the share of the routing the K kept experts hold


def keep_experts(profile: RoutingProfile, *, coverage: float = 0.9, score: str = "token", k: int | None = None) -> KeptExperts:
    """The experts to keep at `coverage` (or exactly `k` per layer)."""
    if not 0 < coverage <= 1:
        raise ConfigError(f"coverage {coverage:g} is outside (0, 1]: it is the share of the domain's routing to keep.")
    scores = profile.scores(score)
    if scores is None:
        raise ConfigError(f"the profile has no {score} scores (profile with saliency to use it).")
    needed = {}
    for layer in profile.layers:
        order = sorted(range(profile.num_experts), key=lambda e: -scores[layer][e])
        total, n = 0.0, 0
        for e in order:
            total += scores[layer][e]
            n += 1
            if total >= coverage - 1e-12:
                break
        needed[layer] = n
    chosen = max(profile.top_k, max(needed.values())) if k is None else k
    if chosen < profile.top_k:
        raise ConfigError(f"K={chosen} keeps fewer experts than the router's top-k ({profile.top_k}): every token needs top-k experts.")
    if chosen > profile.num_experts:
        raise ConfigError(f"K={chosen} is more than the {profile.num_experts} routed experts a layer has.")
    kept, covered = {}, {}
    for layer in profile.layers:
        order = sorted(range(profile.num_experts), key=lambda e: (-scores[layer][e], e))[:chosen]
        kept[layer] = tuple(sorted(order))
        covered[layer] = sum(scores[layer][e] for e in order)
    return KeptExperts(chosen, kept, needed, covered)
