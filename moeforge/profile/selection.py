"""ESFT expert selection: per layer, the smallest top set of experts whose score reaches p.

Wang et al. 2024 (arXiv 2407.01906); DESIGN.md "ESFT, exactly". Scores are normalised per
layer (the reference code normalises across layers by mistake); the defaults are the paper's,
p = 0.2 for token selection ratios and 0.1 for gate scores, with at least one expert per layer.
The result is ESFT's expert-config JSON (`experts`, `shared_experts`, `non_expert_modules`)
plus the fields that say how it was made. Two relatives share the format: a random selection
of the same size per layer (the paper's control), and a coverage selection, the smallest sets
that hold a given share of the routing mass (to size a deployment or a miner's subset).
"""

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moeforge.errors import ConfigError, ModelError
from moeforge.json_file import read_json_model
from moeforge.model.experts import ExpertSlot
from moeforge.model.families import moe_layers
from moeforge.profile.layer_json import write_layer_json
from moeforge.profile.profile_file import RoutingProfile, Score

log = logging.getLogger(__name__)

DEFAULT_P: dict[str, float] = {"token": 0.2, "gate": 0.1, "saliency": 0.2}
_REACHED = 1e-9  # a cumulative score within this of p counts as reaching it (float sums)


class SelectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    score: Score = "token"
    p: float | None = Field(None, gt=0, le=1)  # cumulative score to reach per layer; None: DEFAULT_P[score]
    min_per_layer: int = Field(1, ge=1)
    max_per_layer: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _bounds_agree(self) -> "SelectConfig":
        if self.max_per_layer is not None and self.max_per_layer < self.min_per_layer:
            raise ValueError(f"max_per_layer={self.max_per_layer} is below min_per_layer={self.min_per_layer}")
        return self

    @property
    def threshold(self) -> float:
        return DEFAULT_P[self.score] if self.p is None else self.p


class ExpertConfig(BaseModel):
    """ESFT's expert config, self-describing: which routed experts of which layers to train."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experts: dict[int, tuple[int, ...]]  # absolute layer index → routed expert ids, ascending (JSON: "<layer>")
    shared_experts: bool = False  # ESFT's switches for training shared experts / everything else;
    non_expert_modules: bool = False  # selections made here never set them
    version: Literal[1] = 1
    method: Literal["esft", "coverage", "random"] = "esft"
    score_function: Score | None = None  # for "random": the score of the selection whose counts it copies
    p: float | None = Field(None, gt=0, le=1)  # top-p threshold, or the coverage share
    seed: int | None = None  # "random" only
    model_type: str
    num_experts: int = Field(ge=1)  # routed experts per MoE layer
    top_k: int = Field(ge=1)
    tokens_profiled: int | None = Field(None, ge=1)
    base_fingerprint: str

    @model_validator(mode="after")
    def _well_formed(self) -> "ExpertConfig":
        problems = []
        for layer, ids in sorted(self.experts.items()):
            if layer < 0:
                problems.append(f"layer {layer} is negative")
            if list(ids) != sorted(set(ids)):
                problems.append(f"layer {layer}: expert ids {list(ids)} must be ascending and distinct")
            outside = [e for e in ids if not 0 <= e < self.num_experts]
            if outside:
                problems.append(f"layer {layer}: expert ids {outside} are outside 0..{self.num_experts - 1}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def count(self) -> int:
        """Routed experts selected, over all layers."""
        return sum(len(ids) for ids in self.experts.values())

    @property
    def share(self) -> float:
        """Selected routed experts ÷ all routed experts of the listed layers."""
        return self.count / (self.num_experts * len(self.experts)) if self.experts else 0.0

    def slots(self) -> list[ExpertSlot]:
        """Every selected (layer, expert), sorted."""
        return sorted(ExpertSlot(layer, expert) for layer, ids in self.experts.items() for expert in ids)

    def check_against(self, model) -> None:
        """ModelError listing every layer or expert of this config that `model` does not have."""
        layers = {layer.index: layer for layer in moe_layers(model)}
        problems = []
        if model.config.model_type != self.model_type:
            problems.append(f"it was made for model_type {self.model_type!r}, the model is {model.config.model_type!r}")
        for index, ids in sorted(self.experts.items()):
            layer = layers.get(index)
            if layer is None:
                problems.append(f"layer {index} is not a MoE layer (MoE layers: {_span(sorted(layers))})")
                continue
            problems += [
                f"expert {e} does not exist in layer {index} (it has {layer.num_experts})"
                for e in ids
                if e >= layer.num_experts
            ]
        if problems:
            raise ModelError(
                f"expert config does not fit this {model.config.model_type} model: {'; '.join(problems)}. "
                "Select experts from a profile of this model (`moeforge profile`, then `moeforge select`)."
            )


def top_p_experts(
    scores: Sequence[float], p: float, *, min_per_layer: int = 1, max_per_layer: int | None = None
) -> tuple[int, ...]:
    """The smallest top set of experts whose scores sum to at least p, clamped to [min, max]; ids ascending.

    Experts are ranked by score, ties by lower id, so the result is deterministic.
    """
    ranked = sorted(range(len(scores)), key=lambda e: (-scores[e], e))
    total, n = 0.0, len(ranked)
    for position, expert in enumerate(ranked, start=1):
        total += scores[expert]
        if total >= p - _REACHED:
            n = position
            break
    n = max(n, min_per_layer)
    if max_per_layer is not None:
        n = min(n, max_per_layer)
    return tuple(sorted(ranked[: min(n, len(ranked))]))


def select_experts(profile: RoutingProfile, config: SelectConfig = SelectConfig()) -> ExpertConfig:
    """ESFT's rule on every MoE layer of the profile."""
    scores = profile.scores(config.score)
    experts = {
        layer: top_p_experts(
            scores[layer], config.threshold, min_per_layer=config.min_per_layer, max_per_layer=config.max_per_layer
        )
        for layer in profile.layers
    }
    selected = _from_profile(profile, experts, method="esft", score=config.score, p=config.threshold)
    log.info(
        "selected %d of %d routed experts (%.1f%%) by %s score, p=%g",
        selected.count, profile.num_experts * len(profile.layers), 100 * selected.share, config.score, config.threshold,
    )
    return selected


def coverage_selection(profile: RoutingProfile, share: float = 0.9, score: str = "token") -> ExpertConfig:
    """Per layer, the smallest set of experts holding `share` of the layer's routing mass."""
    if not 0 < share <= 1:
        raise ConfigError(f"coverage share must be in (0, 1], got {share}.")
    scores = profile.scores(score)
    experts = {layer: top_p_experts(scores[layer], share) for layer in profile.layers}
    return _from_profile(profile, experts, method="coverage", score=score, p=share)


def random_selection(config: ExpertConfig, num_experts: int | None = None, seed: int = 0) -> ExpertConfig:
    """The control: per layer, as many experts as `config` selects, drawn uniformly at random."""
    num_experts = config.num_experts if num_experts is None else num_experts
    rng = random.Random(seed)
    experts = {}
    for layer, ids in sorted(config.experts.items()):
        if len(ids) > num_experts:
            raise ConfigError(f"layer {layer} selects {len(ids)} experts but the layer has only {num_experts}.")
        experts[layer] = tuple(sorted(rng.sample(range(num_experts), len(ids))))
    fields = config.model_dump() | {"experts": experts, "method": "random", "seed": seed, "num_experts": num_experts}
    return ExpertConfig(**fields)


def save_expert_config(config: ExpertConfig, path: str | Path) -> Path:
    """Write the config as JSON, ESFT's keys first; returns the path."""
    return write_layer_json(path, config.model_dump(mode="json"))


def load_expert_config(path: str | Path) -> ExpertConfig:
    """Read an expert config; a file that is not one is a ConfigError naming it and the bad keys."""
    return read_json_model(path, ExpertConfig, what="expert config",
                           fix="Make one with `moeforge select PROFILE --out DIR/`.",
                           mistaken={"routing profile (written by `moeforge profile`)": frozenset({"token", "gate", "counts", "layers"})})

def _from_profile(profile: RoutingProfile, experts: dict, *, method: str, score: str, p: float) -> ExpertConfig:
    return ExpertConfig(
        experts=experts,
        method=method,
        score_function=score,
        p=p,
        model_type=profile.model_type,
        num_experts=profile.num_experts,
        top_k=profile.top_k,
        tokens_profiled=profile.tokens,
        base_fingerprint=profile.base_fingerprint,
    )


def _span(indices: list[int]) -> str:
    """'1-26' when contiguous, else the list."""
    if indices and indices == list(range(indices[0], indices[-1] + 1)) and len(indices) > 2:
        return f"{indices[0]}-{indices[-1]}"
    return ", ".join(map(str, indices)) or "none"
