"""A library entry: one expert set on one base model, described by a manifest whose digest is its id.

DESIGN.md "The library". The manifest names everything the entry is made of by store digest (the
expert tensors as safetensors with Hugging Face per-expert key names, the routing profile it was
selected from) and carries what a later job needs to trust and credit it: base fingerprint, slots,
domain and data fingerprint, metrics, lineage, contributors with their shares, licence, the job and
its record's digest, software versions. The canonical manifest JSON (sorted keys, no spaces) is
put in the store as it is, so the entry id is the store digest of that JSON: the same content
deposited twice is one entry. The deposit time lives in the catalog, not here, for that reason.
"""

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from moeforge.errors import DataError
from moeforge.model.experts import ExpertSlot
from moeforge.model.slices import MANIFEST_FILE, SliceManifest, TensorInfo, _from_state
from moeforge.store.protocol import sha256_hex

# SPDX ids the cards and the marketplace know how to describe; anything else is a LicenseRef- with its own text
SPDX_LICENSES = ("Apache-2.0", "MIT", "BSD-3-Clause", "CC-BY-4.0", "CC-BY-SA-4.0", "CC-BY-NC-4.0", "CC0-1.0",
                 "OpenRAIL", "LLAMA-3.1", "GPL-3.0-only", "LGPL-3.0-only", "MPL-2.0", "Proprietary")
_LICENSE_REF = re.compile(r"LicenseRef-[A-Za-z0-9.-]{1,64}")
ENTRY_ID = re.compile(r"[0-9a-f]{64}")
Relation = Literal["warm_start", "merge"]


def check_license(value: str) -> str:
    """`value` if it is an SPDX id moeforge knows or a LicenseRef-<name>; else ValueError (pydantic validators call it)."""
    if value not in SPDX_LICENSES and not _LICENSE_REF.fullmatch(value):
        raise ValueError(f"licence {value!r} is not an SPDX id moeforge knows ({', '.join(SPDX_LICENSES)}) "
                         "nor a LicenseRef-<name>")
    return value


class Parent(BaseModel):
    """An entry this one was warm-started or merged from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    entry: str = Field(pattern=ENTRY_ID.pattern)
    relation: Relation
    slots: int = Field(ge=0)  # how many of this entry's slots came from the parent


class Contributor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1, max_length=128)  # a miner's hotkey (ss58) or the owner/customer name
    role: Literal["miner", "owner"]
    share: float = Field(ge=0, le=1)


class Metrics(BaseModel):
    """What the entry was measured at, on data the training never saw; None where not measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    domain_loss_before: float | None = None  # held-out domain loss, nats per token, base experts
    domain_loss_after: float | None = None
    domain_tokens: int | None = Field(None, ge=0)
    general_ppl_before: float | None = None  # WikiText-2 perplexity (eval/general.py)
    general_ppl_after: float | None = None
    tasks: dict[str, float] = {}  # task scores, e.g. {"gsm8k_exact_match": 0.12}

    @property
    def domain_gain(self) -> float | None:
        if self.domain_loss_before is None or self.domain_loss_after is None:
            return None
        return self.domain_loss_before - self.domain_loss_after


class EntryManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = 1
    base_model: str = Field(min_length=1)  # the base's name (its folder name), for people
    base_fingerprint: str = Field(pattern=ENTRY_ID.pattern)  # model_fingerprint: what the tensors apply to
    model_type: str
    slots: tuple[tuple[int, int], ...]  # (layer, expert), sorted
    experts: str = Field(pattern=ENTRY_ID.pattern)  # store digest of the safetensors blob (expert weights, not deltas)
    tensors: dict[str, TensorInfo]  # every tensor of that blob, as the slice manifest lists them
    profile: str | None = Field(None, pattern=ENTRY_ID.pattern)  # store digest of the RoutingProfile JSON
    domain: str = Field(min_length=1, max_length=200)
    data_fingerprint: str | None = None
    metrics: Metrics = Metrics()
    parents: tuple[Parent, ...] = ()  # empty: trained from the base
    contributors: tuple[Contributor, ...] = ()
    license: str
    source: Literal["network", "train", "combine"]
    job_id: str | None = None
    record_digest: str | None = Field(None, pattern=ENTRY_ID.pattern)  # store digest of the JobRecord
    versions: dict[str, str] = {}

    @field_validator("license")
    @classmethod
    def _spdx(cls, value: str) -> str:
        return check_license(value)

    @model_validator(mode="after")
    def _consistent(self) -> "EntryManifest":
        if list(self.slots) != sorted(set(self.slots)) or not self.slots:
            raise ValueError("slots must be distinct, sorted (layer, expert) pairs, at least one")
        total = sum(c.share for c in self.contributors)
        if self.contributors and abs(total - 1) > 1e-6:
            raise ValueError(f"contributor shares sum to {total:.6f}, not 1")
        return self

    def expert_slots(self) -> list[ExpertSlot]:
        return [ExpertSlot(layer, expert) for layer, expert in self.slots]


def canonical_bytes(manifest: EntryManifest) -> bytes:
    """The manifest as stored: JSON with sorted keys and no spaces, so equal content gives equal bytes."""
    return json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode("utf-8")


def entry_id(manifest: EntryManifest) -> str:
    return sha256_hex(canonical_bytes(manifest))


def parse_manifest(data: bytes, where: str) -> EntryManifest:
    try:
        return EntryManifest.model_validate_json(data)
    except ValueError as exc:
        raise DataError(f"{where}: not a valid library entry manifest ({exc}).") from None


def experts_bytes(piece) -> tuple[bytes, dict[str, TensorInfo]]:
    """(safetensors bytes, tensor table) of an `experts` slice: deterministic for equal tensors."""
    if piece.kind != "experts":
        raise DataError("a library entry holds expert weights; got a delta (apply it to its base first).")
    state = piece.state_dict()
    info = {k: TensorInfo(shape=tuple(t.shape), dtype=str(t.dtype).removeprefix("torch.")) for k, t in state.items()}
    # one metadata key: safetensors writes its metadata map in hash order, so two keys could come out either way round
    return save_tensors(state, metadata={"format": "pt"}), info


def experts_slice(manifest: EntryManifest, data: bytes, where: str):
    """The entry's expert weights as an ExpertSlice, checked strictly against its manifest."""
    try:
        state = load_tensors(data)
    except (SafetensorError, ValueError) as exc:
        raise DataError(f"{where}: the expert tensors are not readable safetensors ({exc}).") from None
    slice_manifest = SliceManifest(kind="experts", model_type=manifest.model_type, base_fingerprint=manifest.base_fingerprint,
                                   slots=manifest.slots, tensors=manifest.tensors, sha256=manifest.experts)
    return _from_state(f"{where} ({MANIFEST_FILE})", slice_manifest, state)
