"""Warm start: a new job's selected experts start from library entries' trained weights instead of the base.

Two per-slot rules for several entries, both measured by bench/compounding.py (`slot_rule`):
"first" (the default) takes each selected slot from the first entry that trained it, the entries
coming ordered by their re-ranked loss gain on the new data (match.py), so the better by loss
wins; "average" takes the mean of the weights of every entry that trained the slot. Slots no
entry has keep the base's. The job records which entries gave how many slots (its lineage), so
their contributors are credited for what grows from them.
"""

from dataclasses import dataclass
from typing import Literal

import torch

from moeforge.errors import ConfigError, ModelError
from moeforge.library.open import Library
from moeforge.model.experts import ExpertSlot, ExpertWeights, write_expert

SlotRule = Literal["first", "average"]


@dataclass(frozen=True)
class WarmSource:
    entry: str
    slots: int  # selected slots that took (a share of) this entry's weights


def warm_start(model, library: Library, entries: list[str], slots: list[ExpertSlot], fingerprint: str,
               rule: SlotRule = "first") -> list[WarmSource]:
    """Write into `model`, for each of `slots` some entry trained, that entry's weights by `rule`; the sources used."""
    if rule not in ("first", "average"):
        raise ConfigError(f"unknown warm-start slot rule {rule!r}: expected first or average.")
    wanted = set(slots)
    having: dict[ExpertSlot, list[tuple[str, ExpertWeights]]] = {}
    resolved = [library.catalog.resolve(entry) if len(entry) != 64 else entry for entry in entries]
    for entry_id in resolved:
        manifest = library.manifest(entry_id)
        if manifest.base_fingerprint != fingerprint:
            raise ModelError(f"library entry {entry_id[:12]}… was trained on base {manifest.base_fingerprint[:16]}…, not this "
                             f"base ({fingerprint[:16]}…): choose an entry trained on this base.")
        give = set(manifest.expert_slots()) & wanted
        if not give:
            continue
        experts = library.experts(manifest, entry_id)
        for slot in give:
            having.setdefault(slot, []).append((entry_id, experts.weights[slot]))
    counts: dict[str, int] = {}
    for slot in sorted(having):
        sources = having[slot] if rule == "average" else having[slot][:1]
        write_expert(model, slot, _mean([w for _, w in sources]))
        for entry_id, _ in sources:
            counts[entry_id] = counts.get(entry_id, 0) + 1
    return [WarmSource(entry=e, slots=counts[e]) for e in resolved if e in counts]


def _mean(weights: list[ExpertWeights]) -> ExpertWeights:
    if len(weights) == 1:
        return weights[0]
    parts = {}
    for name, first in vars(weights[0]).items():
        if first is not None:
            parts[name] = torch.stack([getattr(w, name).to(torch.float64) for w in weights]).mean(0).to(first.dtype)
    return ExpertWeights(**parts)
