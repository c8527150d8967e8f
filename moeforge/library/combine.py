"""Combining entries into one expert set for a customer who needs several domains.

The rule is mergekit's RAM (Reinforced Agent Merging): with task vectors τ_i = θ_i − θ_base, each
weight takes the mean of the τ_i of the entries that changed it and keeps a change only one entry
made whole; nothing is diluted by entries that never touched it. A slot that one entry has comes
from it unchanged; a slot several have is merged so. The caller checks the result by loss on each
domain's held-out sample (`moeforge library combine` prints the table).
"""

from dataclasses import dataclass

import torch

from moeforge.errors import ConfigError
from moeforge.library.open import Library
from moeforge.model.experts import ExpertSlot, ExpertWeights
from moeforge.model.slices import ExpertSlice, extract_slice

UNCHANGED = 0.0  # |τ| at or below this counts as "not changed by this entry"


@dataclass(frozen=True)
class Combined:
    experts: ExpertSlice
    sources: dict[str, int]  # entry id → slots it gave (alone or merged)
    merged_slots: int  # slots more than one entry had


def combine_entries(library: Library, model, fingerprint: str, entries: list[str]) -> Combined:
    """The RAM merge of `entries` (ids or prefixes) on `model`, the base they were all trained on."""
    if len(entries) < 2:
        raise ConfigError("combine needs at least two entries.")
    loaded = []
    for entry in entries:
        entry_id = library.catalog.resolve(entry) if len(entry) != 64 else entry
        manifest = library.manifest(entry_id)
        if manifest.base_fingerprint != fingerprint:
            raise ConfigError(f"library entry {entry_id[:12]}… is on base {manifest.base_fingerprint[:16]}…, not this base "
                              f"({fingerprint[:16]}…): combine entries of one base.")
        loaded.append((entry_id, library.experts(manifest, entry_id)))
    ids = [i for i, _ in loaded]
    if len(set(ids)) != len(ids):
        raise ConfigError("combine was given the same entry twice.")
    slots = sorted({s for _, piece in loaded for s in piece.slots})
    base = extract_slice(model, slots, fingerprint)
    weights: dict[ExpertSlot, ExpertWeights] = {}
    sources = dict.fromkeys(ids, 0)
    merged = 0
    for slot in slots:
        having = [(i, piece.weights[slot]) for i, piece in loaded if slot in piece.weights]
        for i, _ in having:
            sources[i] += 1
        if len(having) == 1:
            weights[slot] = having[0][1]
            continue
        merged += 1
        weights[slot] = _ram(base.weights[slot], [w for _, w in having])
    return Combined(ExpertSlice("experts", model.config.model_type, fingerprint, weights), sources, merged)


def _ram(base: ExpertWeights, others: list[ExpertWeights]) -> ExpertWeights:
    parts = {}
    for name, b in vars(base).items():
        if b is None:
            continue
        b64 = b.to(torch.float64)
        taus = torch.stack([getattr(w, name).to(torch.float64) - b64 for w in others])
        changed = (taus.abs() > UNCHANGED).to(torch.float64)
        mean = taus.sum(0) / changed.sum(0).clamp(min=1)
        parts[name] = (b64 + mean).to(b.dtype)
    return ExpertWeights(**parts)
