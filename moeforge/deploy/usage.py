"""The usage ledger: per request, tokens in and out and routed-expert hits, mapped to library entries; signed and
hash-chained, one append-only JSON-lines file per period (UTC day), so an air-gapped customer can hand it over.

Each record carries `prev` (the hash of the record before it in the file; the first names the
period's genesis), its own `hash` (sha256 of its canonical JSON without hash and signature) and an
ECDSA P-256 `signature` of that hash by the server's key. `verify_ledger` checks every link and
signature and sums usage per entry; the marketplace turns those sums into earnings.
"""

import base64
import hashlib
import json
import os
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from moeforge.errors import ArtifactNotFound, DataError

PREFIX = "usage-"


def _canonical(record: dict) -> bytes:
    return json.dumps({k: v for k, v in record.items() if k not in ("hash", "signature")}, sort_keys=True,
                      separators=(",", ":")).encode("utf-8")


def genesis(model: str, period: str) -> str:
    return hashlib.sha256(f"moeforge-usage|{model}|{period}".encode()).hexdigest()


class Ledger:
    """Appends signed usage records; `mapping`: (layer, served expert id) → (original expert id, library entry or None).

    One Ledger (one server process) writes a folder: it reads a day's file once, when the day opens, then keeps the
    chain's tail in memory (re-reading the file per request would make a busy day quadratic)."""

    def __init__(self, folder: Path, key: Path, *, model: str, mapping: dict[tuple[int, int], tuple[int, str | None]]):
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        self.folder, self.model, self.mapping = Path(folder), model, mapping
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._key = load_pem_private_key(Path(key).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(f"{key}: not a readable EC private key for signing the usage ledger ({exc}).") from None
        self._lock = threading.Lock()
        self._tail: tuple[str, dict | None] | None = None  # (period, its last record): the file is read once a period

    def record(self, request_id: str, *, kind: str, prompt_tokens: int, completion_tokens: int, experts: Counter,
               finish_reason: str) -> dict:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        now = datetime.now(UTC)
        period = now.strftime("%Y-%m-%d")
        hits, entries = Counter(), Counter()
        for (layer, served), n in experts.items():
            original, entry = self.mapping.get((layer, served), (served, None))
            hits[f"{layer}:{original}"] += n
            entries[entry or "base"] += n
        with self._lock:
            path = self.folder / f"{PREFIX}{period}.jsonl"
            if self._tail is None or self._tail[0] != period:
                self._tail = (period, _last(path))
            last = self._tail[1]
            record = {
                "version": 1, "period": period, "seq": 0 if last is None else last["seq"] + 1, "time": now.isoformat(timespec="milliseconds"),
                "model": self.model, "request": request_id, "kind": kind, "finish_reason": finish_reason,
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "experts": dict(sorted(hits.items())), "entries": dict(sorted(entries.items())),
                "prev": genesis(self.model, period) if last is None else last["hash"],
            }
            record["hash"] = hashlib.sha256(_canonical(record)).hexdigest()
            record["signature"] = base64.b64encode(self._key.sign(bytes.fromhex(record["hash"]), ec.ECDSA(hashes.SHA256()))).decode()
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._tail = (period, record)
        return record


def _last(path: Path) -> dict | None:
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def verify_ledger(path: Path, public_key: Path) -> tuple[dict, list[str]]:
    """(totals, problems) over a ledger file or a folder of them: totals per entry, per expert, tokens and requests."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    path = Path(path)
    files = sorted(path.glob(f"{PREFIX}*.jsonl")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise ArtifactNotFound(f"{path}: no usage ledger files ({PREFIX}YYYY-MM-DD.jsonl) there.")
    try:
        key = load_pem_public_key(Path(public_key).read_bytes())
    except (OSError, ValueError) as exc:
        raise DataError(f"{public_key}: not a readable public key ({exc}).") from None
    totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "entries": Counter(), "experts": Counter()}
    problems = []
    for file in files:
        records, found = verify_records(file.name, file.read_text(encoding="utf-8"), key, key_name=str(public_key))
        problems += found
        for record in records:
            totals["requests"] += 1
            totals["prompt_tokens"] += int(record.get("prompt_tokens", 0))
            totals["completion_tokens"] += int(record.get("completion_tokens", 0))
            totals["entries"].update(record.get("entries", {}))
            totals["experts"].update(record.get("experts", {}))
    return totals, problems


def verify_records(name: str, text: str, key, *, key_name: str = "the server's key") -> tuple[list[dict], list[str]]:
    """(records, problems) of one ledger file's text: every link of its chain, every hash, every signature by `key`
    (a loaded public key); a problem names `name:line`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    records, problems, prev = [], [], None
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{name}:{number}"
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(f"{where}: not JSON")
            prev = None
            continue
        if not isinstance(record, dict):
            problems.append(f"{where}: not a ledger record (a JSON object)")
            prev = None
            continue
        expected_prev = genesis(str(record.get("model", "")), str(record.get("period", ""))) if prev is None else prev
        if record.get("prev") != expected_prev:
            problems.append(f"{where}: breaks the chain (a record before it was removed, changed or reordered)")
        if hashlib.sha256(_canonical(record)).hexdigest() != record.get("hash"):
            problems.append(f"{where}: its hash does not match its content (altered)")
        try:
            key.verify(base64.b64decode(str(record.get("signature", ""))), bytes.fromhex(str(record.get("hash", ""))),
                       ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            problems.append(f"{where}: the signature does not verify with {key_name}")
        prev = record.get("hash")
        records.append(record)
    return records, problems
