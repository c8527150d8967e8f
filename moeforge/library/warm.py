"""Warm start: a new job's selected experts start from library entries' trained weights instead of the base.

Per slot, the rule is "the better by loss": the entries come ordered by their re-ranked loss gain
on the new data (match.py), and each selected slot takes its weights from the first entry that
trained it; slots no entry has keep the base's. The job records which entries gave how many
slots (its lineage), so their contributors are credited for what grows from them.
"""

from dataclasses import dataclass

from moeforge.errors import ModelError
from moeforge.library.open import Library
from moeforge.model.experts import ExpertSlot, write_expert


@dataclass(frozen=True)
class WarmSource:
    entry: str
    slots: int  # selected slots that took this entry's weights


def warm_start(model, library: Library, entries: list[str], slots: list[ExpertSlot], fingerprint: str) -> list[WarmSource]:
    """Write into `model`, for each of `slots`, the weights of the first of `entries` that has that slot; the sources used."""
    wanted, sources, taken = set(slots), [], set()
    for entry in entries:
        manifest = library.manifest(entry)
        entry_id = library.catalog.resolve(entry) if len(entry) != 64 else entry
        if manifest.base_fingerprint != fingerprint:
            raise ModelError(f"library entry {entry_id[:12]}… was trained on base {manifest.base_fingerprint[:16]}…, not this "
                             f"base ({fingerprint[:16]}…): warm-start from an entry on the job's base.")
        give = (set(manifest.expert_slots()) & wanted) - taken
        if not give:
            continue
        experts = library.experts(manifest, entry_id)
        for slot in sorted(give):
            write_expert(model, slot, experts.weights[slot])
        taken |= give
        sources.append(WarmSource(entry=entry_id, slots=len(give)))
    return sources
