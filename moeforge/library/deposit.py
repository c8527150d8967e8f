"""Depositing an expert set: check it applies to its base exactly, put its blobs, index it.

Two sources: a network job's final adopted state (the owner deposits it when the job ends; the
contributors are the job's miners by their contribution shares) and a local `moeforge train`
output (base + delta, the owner named as sole contributor). The tensors must fit the base model
they name (fingerprint, slots, shapes); anything else is refused before a byte is stored.
"""

import logging
from pathlib import Path

from moeforge.errors import ModelError
from moeforge.library.entry import Contributor, EntryManifest, Metrics, Parent, experts_bytes
from moeforge.library.open import Library
from moeforge.model.slices import ExpertSlice, check_fits

log = logging.getLogger(__name__)


def deposit(library: Library, model, fingerprint: str, experts: ExpertSlice, *, profile_json: bytes | None, **fields) -> tuple[str, bool]:
    """Put an expert set (weights, not a delta) trained on `model` (whose fingerprint is `fingerprint`) in the library.

    `fields`: the rest of the EntryManifest (domain, metrics, parents, contributors, licence, source, …). (id, new)."""
    if experts.base_fingerprint != fingerprint:
        raise ModelError(f"the expert set was made on base model {experts.base_fingerprint[:16]}…, but the base named is "
                         f"{fingerprint[:16]}…: deposit it with the base it was trained on.")
    check_fits(model, experts)
    data, tensors = experts_bytes(experts)
    manifest = EntryManifest(
        base_model=fields.pop("base_model", None) or Path(getattr(model, "name_or_path", "") or "base").name or "base",
        base_fingerprint=fingerprint, model_type=model.config.model_type,
        slots=tuple((s.layer, s.expert) for s in experts.slots), experts=library.store.put(data), tensors=tensors,
        profile=library.store.put(profile_json) if profile_json is not None else None, **fields,
    )
    entry_id, new = library.put(manifest)
    log.debug("%s library entry %s… (%s, %d experts)", "deposited" if new else "already had", entry_id[:12],
             manifest.domain, len(manifest.slots))
    return entry_id, new


def job_fields(record, job, *, license: str, general_ppl: tuple[float | None, float | None]) -> dict:
    """The manifest fields a network job's record gives: metrics, lineage, contributors by share."""
    from moeforge.store.protocol import sha256_hex

    contributors = tuple(Contributor(id=hotkey, role="miner", share=share)
                         for hotkey, share in sorted(record.contributions.items()) if share > 0)
    return dict(
        domain=record.domain, data_fingerprint=job.data_fingerprint, source="network", job_id=record.job_id,
        record_digest=sha256_hex(record.model_dump_json().encode("utf-8")), versions=dict(record.versions), license=license,
        metrics=Metrics(domain_loss_before=record.heldout_loss_before, domain_loss_after=record.heldout_loss_after,
                        domain_tokens=record.heldout_tokens, general_ppl_before=general_ppl[0], general_ppl_after=general_ppl[1]),
        parents=tuple(Parent(entry=w.entry, relation="warm_start", slots=w.slots) for w in job.warm_start),
        contributors=_normalised(contributors),
    )


def _normalised(contributors: tuple[Contributor, ...]) -> tuple[Contributor, ...]:
    total = sum(c.share for c in contributors)
    if not contributors or abs(total - 1) <= 1e-9:
        return contributors
    return tuple(c.model_copy(update={"share": c.share / total}) for c in contributors)
