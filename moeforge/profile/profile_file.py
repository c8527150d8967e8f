"""A routing profile: per MoE layer and routed expert, how a base model routes one domain's tokens.

The three scores of DESIGN.md "ESFT, exactly", each normalised per layer to sum to 1: `token`
(ESFT-Token, share of the layer's top-k slots), `gate` (ESFT-Gate, mean gate weight) and
`saliency` (REAP, mean over routed tokens of gate × ‖expert output‖). The raw sums they come
from travel with them, so profiles can be merged or re-normalised later. On disk it is JSON,
named by the base model's fingerprint; a profile of another base is refused on load.
"""

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moeforge.errors import ConfigError, DataError, ModelError
from moeforge.json_file import read_json_model
from moeforge.profile.layer_json import write_layer_json

log = logging.getLogger(__name__)

Score = Literal["token", "gate", "saliency"]
SCORES: tuple[str, ...] = ("token", "gate", "saliency")

Vector = tuple[float, ...]  # one value per routed expert of a layer


class RoutingProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    model_type: str
    base_fingerprint: str  # model_fingerprint of the profiled base
    data_fingerprint: str  # fingerprint_records of the data the tokens were drawn from
    records_used: int | None = Field(None, ge=0)  # the first records_used records gave the tokens
    tokens: int = Field(ge=1)  # real tokens profiled (padding excluded)
    seq_len: int | None = Field(None, ge=1)  # packed row length the tokens were run in
    top_k: int = Field(ge=1)
    num_experts: int = Field(ge=1)
    layers: tuple[int, ...]  # absolute decoder-layer indices of the MoE layers, ascending
    token: dict[int, Vector]  # share of the layer's top-k slots per expert; sums to 1
    gate: dict[int, Vector]  # mean gate weight per expert (0 where not chosen), normalised per layer
    saliency: dict[int, Vector] | None = None  # REAP saliency, normalised per layer; None if not computed
    counts: dict[int, tuple[int, ...]]  # top-k slots per expert; sums to tokens × top_k per layer
    gate_sums: dict[int, Vector]  # sum over tokens of the gate weight given to the expert
    saliency_sums: dict[int, Vector] | None = None  # sum over routed tokens of gate × ‖expert output‖

    @model_validator(mode="after")
    def _consistent(self) -> "RoutingProfile":
        problems = []
        if list(self.layers) != sorted(set(self.layers)):
            problems.append(f"layers must be ascending and distinct, got {list(self.layers)}")
        if (self.saliency is None) != (self.saliency_sums is None):
            problems.append("saliency and saliency_sums must both be present or both be null")
        vectors = {"token": self.token, "gate": self.gate, "counts": self.counts, "gate_sums": self.gate_sums}
        if self.saliency is not None and self.saliency_sums is not None:
            vectors |= {"saliency": self.saliency, "saliency_sums": self.saliency_sums}
        for name, per_layer in vectors.items():
            if sorted(per_layer) != sorted(self.layers):
                problems.append(f"{name} has layers {sorted(per_layer)}, expected {list(self.layers)}")
                continue
            bad = [layer for layer, values in per_layer.items() if len(values) != self.num_experts]
            if bad:
                problems.append(f"{name} of layer(s) {bad} do not have num_experts={self.num_experts} values")
        if not problems:
            for layer, counts in self.counts.items():
                if sum(counts) != self.tokens * self.top_k:
                    problems.append(
                        f"counts of layer {layer} sum to {sum(counts)}, expected tokens × top_k = "
                        f"{self.tokens} × {self.top_k} = {self.tokens * self.top_k}"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def scores(self, score: str) -> dict[int, Vector]:
        """One score's per-layer vectors; ConfigError if it is unknown or was not computed."""
        if score not in SCORES:
            raise ConfigError(f"unknown score {score!r}; expected one of: {', '.join(SCORES)}.")
        values = getattr(self, score)
        if values is None:
            raise ConfigError(
                f"this profile has no {score!r} scores (it was made without saliency). "
                "Re-run `moeforge profile` without --no-saliency, or choose --score token or gate."
            )
        return values


def save_profile(profile: RoutingProfile, path: str | Path) -> Path:
    """Write the profile as indented JSON; returns the path."""
    path = write_layer_json(path, profile.model_dump(mode="json"))
    log.info("wrote routing profile of %d layers, %s tokens to %s", len(profile.layers), f"{profile.tokens:,}", path)
    return path


def load_profile(path: str | Path, *, expect_fingerprint: str | None = None) -> RoutingProfile:
    """Read a profile; a bad file is a DataError naming it, another base model a ModelError."""
    path = Path(path)
    profile = read_json_model(path, RoutingProfile, what="routing profile", error=DataError,
                              fix="Make one with `moeforge profile MODEL DATA --out DIR`.")
    if expect_fingerprint is not None and profile.base_fingerprint != expect_fingerprint:
        raise ModelError(
            f"{path}: this profile was made on base model {profile.base_fingerprint[:12]}…, but the model "
            f"in use has fingerprint {expect_fingerprint[:12]}…. Profile this model with `moeforge profile`."
        )
    return profile

