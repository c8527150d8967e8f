"""Hotkey-bound commitments and the on-chain payloads that carry them (≤128 bytes each).

DESIGN.md "The network", steps 3–4. Before the commit deadline a miner posts
`commitment(delta_digest, hotkey, round)`; after it, the miner reveals the delta's store address
(its sha256 digest). A validator recomputes the commitment from the revealed digest and the
committer's own hotkey, so a commitment copied from another miner never verifies.

The hashed bytes are unambiguous (every variable-length field is length-prefixed):

    sha256( b"moeforge/commit/v1"                      # domain tag, 18 bytes
            ‖ delta_digest                              # 32 raw bytes (the 64-hex store address)
            ‖ len(hotkey_utf8) as 2-byte big-endian ‖ hotkey_utf8
            ‖ round as 8-byte big-endian )

The payloads are `version (1 byte) ‖ kind (1 byte) ‖ round (8 bytes, big-endian) ‖ body`:

    0x01 commit   body = the 32-byte commitment hash                        (42 bytes)
    0x02 reveal   body = the delta's 32-byte store digest                   (42 bytes)
    0x03 result   body = state content sha256 ‖ round report store digest  (74 bytes; a validator's round outcome)
    0x04 job      body = the job spec's 32-byte store digest, round 0       (42 bytes; the owner's job)

The round rides along because a chain keeps each hotkey's latest commitment across rounds: a
stale one is told apart from a wrong one. Decoding never raises: anything else decodes to
`Malformed(reason)`.
"""

import hashlib
import hmac
import logging
from dataclasses import dataclass

from moeforge.errors import PayloadError

log = logging.getLogger(__name__)

VERSION = 1
KIND_COMMIT = 0x01
KIND_REVEAL = 0x02
KIND_RESULT = 0x03
KIND_JOB = 0x04
PAYLOAD_BYTES = 42  # version + kind + round + 32-byte hash; the chain allows 128
RESULT_PAYLOAD_BYTES = 74  # version + kind + round + two 32-byte hashes
_LENGTHS = {KIND_COMMIT: PAYLOAD_BYTES, KIND_REVEAL: PAYLOAD_BYTES, KIND_RESULT: RESULT_PAYLOAD_BYTES, KIND_JOB: PAYLOAD_BYTES}
_NAMES = {KIND_COMMIT: "commit", KIND_REVEAL: "reveal", KIND_RESULT: "result", KIND_JOB: "job"}
MAX_CHAIN_PAYLOAD = 128
_TAG = b"moeforge/commit/v1"
_MAX_ROUND = 2**64 - 1


@dataclass(frozen=True)
class CommitPayload:
    round: int
    commitment: bytes  # 32 bytes, sha256(delta_digest ‖ hotkey ‖ round)


@dataclass(frozen=True)
class RevealPayload:
    round: int
    digest: str  # 64 lowercase hex: the delta's store address


@dataclass(frozen=True)
class ResultPayload:
    round: int
    state_sha256: str  # 64 lowercase hex: the content digest of the validator's resulting expert state
    report: str  # 64 lowercase hex: the store address of its round report (which names the state's address)


@dataclass(frozen=True)
class JobPayload:
    job: str  # 64 lowercase hex: the store address of the job spec


@dataclass(frozen=True)
class Malformed:
    reason: str  # what is wrong with the payload, for the verdict's detail


def commitment(delta_digest_hex: str, hotkey_ss58: str, round: int) -> bytes:
    """The 32-byte hotkey- and round-bound commitment to a delta (encoding: module docstring)."""
    digest = _digest_bytes(delta_digest_hex)
    hotkey = hotkey_ss58.encode("utf-8")
    if not hotkey or len(hotkey) > 0xFFFF:
        raise PayloadError(f"hotkey must be 1..65535 bytes of UTF-8; got {len(hotkey)} bytes.")
    _check_round(round)
    return hashlib.sha256(_TAG + digest + len(hotkey).to_bytes(2, "big") + hotkey + round.to_bytes(8, "big")).digest()


def verify_commitment(committed: bytes, delta_digest_hex: str, hotkey_ss58: str, round: int) -> bool:
    """Whether `committed` is this hotkey's round-`round` commitment to this digest (constant-time compare)."""
    try:
        expected = commitment(delta_digest_hex, hotkey_ss58, round)
    except PayloadError:
        return False
    return hmac.compare_digest(expected, bytes(committed))


def encode_commitment(commit: bytes, round: int) -> bytes:
    """The on-chain commit payload for a 32-byte commitment."""
    if len(commit) != 32:
        raise PayloadError(f"a commitment is 32 bytes (sha256); got {len(commit)}.")
    return _encode(KIND_COMMIT, round, bytes(commit))


def encode_reveal(delta_digest_hex: str, round: int) -> bytes:
    """The on-chain reveal payload: the delta's store address."""
    return _encode(KIND_REVEAL, round, _digest_bytes(delta_digest_hex))


def decode_commitment(payload: bytes | str) -> CommitPayload | Malformed:
    """A commit payload (raw bytes, or hex text as some chains hand it back) → CommitPayload, or Malformed."""
    fields = _decode(payload, KIND_COMMIT)
    return fields if isinstance(fields, Malformed) else CommitPayload(round=fields[0], commitment=fields[1])


def decode_reveal(payload: bytes | str) -> RevealPayload | Malformed:
    """A reveal payload → RevealPayload, or Malformed."""
    fields = _decode(payload, KIND_REVEAL)
    return fields if isinstance(fields, Malformed) else RevealPayload(round=fields[0], digest=fields[1].hex())


def encode_result(state_sha256_hex: str, report_digest_hex: str, round: int) -> bytes:
    """A validator's on-chain round outcome: the content digest of its state and its report's address."""
    return _encode(KIND_RESULT, round, _digest_bytes(state_sha256_hex) + _digest_bytes(report_digest_hex))


def encode_job(job_digest_hex: str) -> bytes:
    """The owner's on-chain job payload: the job spec's store address."""
    return _encode(KIND_JOB, 0, _digest_bytes(job_digest_hex))


def decode_result(payload: bytes | str) -> ResultPayload | Malformed:
    """A result payload → ResultPayload, or Malformed."""
    fields = _decode(payload, KIND_RESULT)
    if isinstance(fields, Malformed):
        return fields
    return ResultPayload(round=fields[0], state_sha256=fields[1][:32].hex(), report=fields[1][32:].hex())


def decode_job(payload: bytes | str) -> JobPayload | Malformed:
    """A job payload → JobPayload, or Malformed."""
    fields = _decode(payload, KIND_JOB)
    return fields if isinstance(fields, Malformed) else JobPayload(job=fields[1].hex())


def _encode(kind: int, round: int, body: bytes) -> bytes:
    _check_round(round)
    return bytes([VERSION, kind]) + round.to_bytes(8, "big") + body


def _decode(payload: bytes | str, kind: int) -> tuple[int, bytes] | Malformed:
    if isinstance(payload, str):
        try:
            payload = bytes.fromhex(payload.removeprefix("0x"))
        except ValueError:
            return Malformed(f"payload text is not hex: {payload[:24]!r}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        return Malformed(f"payload is a {type(payload).__name__}, not bytes")
    payload = bytes(payload)
    if len(payload) != _LENGTHS[kind]:
        return Malformed(f"payload is {len(payload)} bytes, expected {_LENGTHS[kind]}")
    if payload[0] != VERSION:
        return Malformed(f"payload version {payload[0]}, expected {VERSION}")
    if payload[1] != kind:
        return Malformed(f"payload kind 0x{payload[1]:02x} ({_NAMES.get(payload[1], 'unknown')}), expected {_NAMES[kind]}")
    return int.from_bytes(payload[2:10], "big"), payload[10:]


def _digest_bytes(delta_digest_hex: str) -> bytes:
    text = delta_digest_hex.lower() if isinstance(delta_digest_hex, str) else ""
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise PayloadError(f"a delta digest is 64 hex characters (sha256); got {str(delta_digest_hex)[:70]!r}.")
    return bytes.fromhex(text)


def _check_round(round: int) -> None:
    if not 0 <= round <= _MAX_ROUND:
        raise PayloadError(f"round must be in 0..2**64-1; got {round}.")
