"""Safe tensor transport: expert states and deltas as safetensors bytes with a signed header.

The one way tensors travel between roles (DESIGN.md "The network": miners upload signed deltas,
validators load them). The safetensors `__metadata__` holds an `Envelope` (format version,
hotkey, job, round, kind, slots, and a sha256 of the tensors) as strings, plus the hotkey's
sr25519 signature over `canonical_bytes(envelope)`; so no header field and no tensor byte can
change without breaking the signature. `unpack` checks the header strictly first
(`safetensors_header.py`), then the slots, the digest, the signature and the expected hotkey,
job and round, and only then hands the bytes to `safetensors`. Nothing here unpickles.

The digest covers the tensors, not the file layout: for each tensor in name order,
`json.dumps([name, dtype, shape], separators=(",", ":"))` + b"\\n" + its raw little-endian bytes.
"""

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from moeforge.chain.keys import sign, verify
from moeforge.errors import ChainError, PayloadError
from moeforge.model.experts import ExpertSlot
from moeforge.network.safetensors_header import DEFAULT_LIMITS, Header, Limits, check_tensors, parse_header, read_json_header, show_name

__all__ = ["DEFAULT_LIMITS", "Envelope", "Limits", "PayloadKind", "canonical_bytes", "pack", "unpack"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SIGNING_DOMAIN = b"moeforge.payload.v1\n"  # so a payload signature is never valid for another kind of message
METADATA_FIELDS = ("version", "hotkey", "job", "round", "kind", "slots", "payload_sha256", "signature")
MAX_JOB_CHARS = 128
MAX_SIGNATURE_BYTES = 128
PayloadKind = Literal["delta", "state"]
_SS58 = r"^[1-9A-HJ-NP-Za-km-z]{32,64}$"  # base58 alphabet; keys.verify decodes it for real
_ROUND = re.compile(r"0|[1-9][0-9]{0,18}")  # canonical decimal, no sign, no leading zeros
_SIGNATURE = re.compile(rf"(?:[0-9a-f]{{2}}){{1,{MAX_SIGNATURE_BYTES}}}")
MOMENTUM_PREFIX = "outer_momentum."  # a state's outer-optimizer momentum: the same expert keys under this prefix
_EXPERT_KEY = re.compile(
    r"(?P<momentum>outer_momentum\.)?model\.layers\.(?P<layer>0|[1-9][0-9]*)\.(?:[A-Za-z_][A-Za-z0-9_]*\.)+experts\.(?P<expert>0|[1-9][0-9]*)"
    r"\.[A-Za-z_][A-Za-z0-9_]*\.(?:weight|bias)",
    re.ASCII,
)


class Envelope(BaseModel):
    """Who sent which tensors for what: every field is signed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    version: Literal[1] = FORMAT_VERSION
    hotkey: str = Field(pattern=_SS58)  # the signer's ss58 address
    job: str = Field(min_length=1, max_length=MAX_JOB_CHARS, pattern=r"^[\x21-\x7e]+$")
    round: int = Field(ge=0, lt=10**19)
    kind: PayloadKind
    slots: tuple[ExpertSlot, ...] = Field(min_length=1)  # sorted, distinct
    payload_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("slots")
    @classmethod
    def _sorted_distinct(cls, slots: tuple[ExpertSlot, ...]) -> tuple[ExpertSlot, ...]:
        for s in slots:
            if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (s.layer, s.expert)):
                raise ValueError(f"slot {s} is not two non-negative integers")
        if list(slots) != sorted(set(slots)):
            raise ValueError("slots must be sorted and distinct")
        return slots


def pack(
    tensors: Mapping[str, torch.Tensor],
    *,
    keypair,
    job: str,
    round: int,
    kind: PayloadKind,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Safetensors bytes of `tensors`, signed by `keypair` (its `ss58_address` is the hotkey).

    The slots are read from the tensor names (`model.layers.L.<block>.experts.E.<part>`). The
    result is checked against `limits`, so what `pack` returns, `unpack` with the same limits accepts.
    """
    where = f"cannot pack for job {job!r} round {round}"
    flat = _prepared(tensors, where)
    slots = _slots_of(flat, where, kind)
    unsigned = save_safetensors(flat)
    digest = _payload_sha256(parse_header(unsigned, limits, where), unsigned)
    del unsigned
    try:
        envelope = Envelope(hotkey=keypair.ss58_address, job=job, round=round, kind=kind, slots=slots, payload_sha256=digest)
    except ValidationError as exc:
        raise PayloadError(f"{where}: {_problems(exc)}.") from None
    signature = sign(keypair, canonical_bytes(envelope))
    data = save_safetensors(flat, metadata={**_fields(envelope), "signature": signature.hex()})
    read_json_header(data, limits, where)  # the signed header must fit the limits too
    log.debug("packed %s %s round %d: %d tensors, %d slots, %d bytes", kind, job, round, len(flat), len(slots), len(data))
    return data


def unpack(
    data: bytes,
    *,
    limits: Limits = DEFAULT_LIMITS,
    expect_hotkey: str | None = None,
    expect_job: str | None = None,
    expect_round: int | None = None,
    expect_kind: PayloadKind | None = None,
) -> tuple[Envelope, dict[str, torch.Tensor]]:
    """The signed envelope and the tensors of `data`, or PayloadError saying what is wrong and where.

    Order: header structure, envelope fields, slots against tensor names, tensor digest,
    signature, expected hotkey/job/round/kind; only then are the tensors loaded.
    """
    obj, data_start = read_json_header(data, limits, f"payload ({len(data):,} bytes)")
    where = _who(obj, len(data))
    header = check_tensors(obj, data_start, len(data), limits, where)
    envelope, signature = _read_envelope(header.metadata, where)
    _check_slots(envelope, header, where)
    digest = _payload_sha256(header, data)
    if digest != envelope.payload_sha256:
        raise PayloadError(
            f"{where}: the tensors' sha256 is {digest}, but the signed header says {envelope.payload_sha256}; "
            "the tensors or the digest changed after signing (or in transit). Ask the sender to upload it again."
        )
    if not _verified(envelope, signature, where):
        raise PayloadError(
            f"{where}: the signature does not verify for hotkey {envelope.hotkey}: the payload was signed by "
            "another key, or a header field was changed after signing. Reject it."
        )
    _check_expected(envelope, where, hotkey=expect_hotkey, job=expect_job, round=expect_round, kind=expect_kind)
    try:
        tensors = load_safetensors(bytes(data))
    except SafetensorError as exc:
        raise PayloadError(f"{where}: safetensors refused a header this reader accepted ({exc}).") from None
    if sorted(tensors) != [e.name for e in header.tensors]:
        raise PayloadError(f"{where}: safetensors loaded tensors {_names(sorted(tensors))}, the header lists {_names([e.name for e in header.tensors])}.")
    return envelope, tensors


def canonical_bytes(envelope: Envelope) -> bytes:
    """What the hotkey signs: SIGNING_DOMAIN, then the header fields (all but `signature`) as
    JSON with sorted keys, no spaces, ASCII only; the same strings `__metadata__` holds."""
    return SIGNING_DOMAIN + json.dumps(_fields(envelope), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _fields(envelope: Envelope) -> dict[str, str]:
    """The envelope as the `__metadata__` strings (the canonical form a reader also demands)."""
    return {
        "version": str(envelope.version),
        "hotkey": envelope.hotkey,
        "job": envelope.job,
        "round": str(envelope.round),
        "kind": envelope.kind,
        "slots": json.dumps([[s.layer, s.expert] for s in envelope.slots], separators=(",", ":")),
        "payload_sha256": envelope.payload_sha256,
    }


def _prepared(tensors: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, Mapping) or not tensors:
        raise PayloadError(f"{where}: expected a non-empty dict of name → tensor, got {type(tensors).__name__} {tensors!r:.60}.")
    bad = [f"{k!r:.80} → {type(t).__name__}" for k, t in tensors.items() if not (isinstance(k, str) and isinstance(t, torch.Tensor))]
    if bad:
        raise PayloadError(f"{where}: every entry must be str → torch.Tensor; not: {', '.join(bad[:5])}.")
    return {k: t.detach().cpu().contiguous() for k, t in tensors.items()}


def _slots_of(tensors: Mapping[str, torch.Tensor], where: str, kind: PayloadKind) -> tuple[ExpertSlot, ...]:
    slots, bad = set(), []
    for name in tensors:
        m = _EXPERT_KEY.fullmatch(name)
        if m is None or (m["momentum"] and kind != "state"):
            bad.append(show_name(name))
        else:
            slots.add(ExpertSlot(int(m["layer"]), int(m["expert"])))
    if bad:
        raise PayloadError(
            f"{where}: only routed-expert tensors travel (model.layers.L.<block>.experts.E.<part>.weight|bias, "
            f"and in a state its outer momentum under {MOMENTUM_PREFIX!r}); not: {', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}."
        )
    return tuple(sorted(slots))


def _who(obj: dict, size: int) -> str:
    """'payload from <hotkey>' when the header names a plausible one, else 'payload (N bytes)'."""
    metadata = obj.get("__metadata__")
    hotkey = metadata.get("hotkey") if isinstance(metadata, dict) else None
    if isinstance(hotkey, str) and re.fullmatch(_SS58, hotkey):
        return f"payload from {hotkey}"
    return f"payload ({size:,} bytes)"


def _read_envelope(metadata: dict[str, str] | None, where: str) -> tuple[Envelope, bytes]:
    if metadata is None:
        raise PayloadError(
            f"{where}: the header has no __metadata__, so it is not a signed moeforge payload (a plain safetensors "
            "file?). Pack tensors with moeforge.network.transport.pack."
        )
    missing, extra = sorted(set(METADATA_FIELDS) - set(metadata)), sorted(set(metadata) - set(METADATA_FIELDS))
    if missing or extra:
        raise PayloadError(
            f"{where}: __metadata__ fields do not match: missing {missing}, unexpected {[_short(k) for k in extra[:5]]} "
            f"(expected exactly {list(METADATA_FIELDS)})."
        )
    if metadata["version"] != str(FORMAT_VERSION):
        raise PayloadError(f"{where}: format version {_short(metadata['version'])!r}; this reader reads version {FORMAT_VERSION}. Upgrade moeforge.")
    if not _ROUND.fullmatch(metadata["round"]):
        raise PayloadError(f"{where}: field 'round' is {_short(metadata['round'])!r}, expected a decimal integer ≥ 0 without sign or leading zeros.")
    if not _SIGNATURE.fullmatch(metadata["signature"]):
        raise PayloadError(f"{where}: field 'signature' is not lowercase hex of 1-{MAX_SIGNATURE_BYTES} bytes.")
    fields = {k: metadata[k] for k in ("hotkey", "job", "kind", "payload_sha256")}
    try:
        envelope = Envelope(round=int(metadata["round"]), slots=_parse_slots(metadata["slots"], where), **fields)
    except ValidationError as exc:
        raise PayloadError(f"{where}: invalid header fields: {_problems(exc)}.") from None
    for key, value in _fields(envelope).items():
        if metadata[key] != value:
            raise PayloadError(f"{where}: field {key!r} is {_short(metadata[key])!r}, not in canonical form {_short(value)!r}.")
    return envelope, bytes.fromhex(metadata["signature"])


def _parse_slots(text: str, where: str) -> tuple[ExpertSlot, ...]:
    try:
        pairs = json.loads(text)
    except (ValueError, RecursionError):
        pairs = None
    ok = isinstance(pairs, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in p) for p in pairs
    )
    if not ok:
        raise PayloadError(f"{where}: field 'slots' is {_short(text)!r}, expected a JSON list of [layer, expert] integer pairs.")
    return tuple(ExpertSlot(layer, expert) for layer, expert in pairs)


def _check_slots(envelope: Envelope, header: Header, where: str) -> None:
    """Every tensor belongs to a slot the header names, and every named slot has a tensor."""
    claimed, carried, problems = set(envelope.slots), set(), []
    for e in header.tensors:
        m = _EXPERT_KEY.fullmatch(e.name)
        if m is None:
            problems.append(f"tensor {show_name(e.name)} is not a routed-expert key (model.layers.L.<block>.experts.E.<part>.weight|bias)")
            continue
        if m["momentum"] and envelope.kind != "state":
            problems.append(f"tensor {show_name(e.name)} is outer momentum, which only a state carries, not a {envelope.kind}")
            continue
        slot = ExpertSlot(int(m["layer"]), int(m["expert"]))
        carried.add(slot)
        if slot not in claimed:
            problems.append(f"tensor {show_name(e.name)} is (layer {slot.layer}, expert {slot.expert}), which the header's slots do not list")
    problems += [f"slot (layer {s.layer}, expert {s.expert}) is in the header but no tensor carries it" for s in sorted(claimed - carried)]
    if problems:
        raise PayloadError(f"{where}: tensors and slots disagree: " + "; ".join(problems[:10]) + (" …" if len(problems) > 10 else "") + ".")


def _payload_sha256(header: Header, data: bytes) -> str:
    """sha256 over each tensor in name order: its [name, dtype, shape] as compact JSON, a newline, its bytes."""
    digest, view = hashlib.sha256(), memoryview(data)
    for e in header.tensors:
        digest.update(json.dumps([e.name, e.dtype, list(e.shape)], separators=(",", ":")).encode("ascii") + b"\n")
        digest.update(view[header.data_start + e.begin : header.data_start + e.end])
    return digest.hexdigest()


def _verified(envelope: Envelope, signature: bytes, where: str) -> bool:
    try:
        return verify(envelope.hotkey, canonical_bytes(envelope), signature)
    except ChainError as exc:
        raise PayloadError(f"{where}: field 'hotkey' is not a valid ss58 address ({exc}).") from None


def _check_expected(envelope: Envelope, where: str, **expected) -> None:
    for name, want in expected.items():
        have = getattr(envelope, name)
        if want is None or have == want:
            continue
        if name == "hotkey":
            raise PayloadError(f"{where}: signed by hotkey {have}, expected {want} (the hotkey that committed it); refused.")
        raise PayloadError(f"{where}: signed for {name} {have!r}, expected {want!r}; a stale, replayed or misaddressed payload is refused.")


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']} (got {_short(repr(err['input']))})" for err in exc.errors())


def _names(names: list[str]) -> str:
    return ", ".join(show_name(n) for n in names[:5]) + (" …" if len(names) > 5 else "")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
