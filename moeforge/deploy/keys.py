"""The local server's keys file: each API key kept as its sha256, with a name, an optional expiry and a revocation.

`moeforge serve-key create --keys F --name N [--expires 30d]` adds a key and prints it once; `moeforge serve
--keys F` accepts the keys in F that have neither expired nor been revoked. The server reads F again when it
changes on disk, so a key revoked, added or expired takes effect at the next request, with no restart. A file
edited into something unreadable while the server runs leaves the server on the last good reading (and says so
in its log); the CLI writes F atomically, so only a hand edit can do that.

    {"version": 1, "keys": [{"id": "key-…", "name": "…", "sha256": "…", "created_at": "…Z",
                             "expires_at": "…Z" | null, "revoked_at": "…Z" | null}]}
"""

import hashlib
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from moeforge.errors import ConfigError

log = logging.getLogger(__name__)
PREFIX = "sk-moeforge-"
_DURATION = re.compile(r"(\d+)([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$"
FIX = "Make it with `moeforge serve-key create --keys FILE --name NAME`."


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^key-[0-9a-f]{8}$")
    name: str = Field(pattern=_NAME)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def state(self, at: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and at >= self.expires_at:
            return "expired"
        return "active"


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(1, ge=1, le=1)
    keys: list[KeyEntry] = Field(default_factory=list)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_keys(path: Path) -> KeysFile:
    from moeforge.json_file import read_json_model

    keys = read_json_model(path, KeysFile, what="server keys", fix=FIX, name="--keys")
    for entry in keys.keys:
        for when in (entry.created_at, entry.expires_at, entry.revoked_at):
            if when is not None and when.tzinfo is None:
                raise ConfigError(f"--keys {path}: key {entry.id}: a time without a zone ({when.isoformat()}); write it in UTC "
                                  "with a trailing Z.")
    ids = [e.id for e in keys.keys]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--keys {path}: a key id is listed twice. {FIX}")
    return keys


def write_keys(path: Path, keys: KeysFile) -> None:
    from moeforge.atomic import write_text

    write_text(path, keys.model_dump_json(indent=2) + "\n")
    os.chmod(path, 0o600)


def expiry(text: str | None, now: datetime) -> datetime | None:
    """`30d`, `12h`, `90m` from now, or an ISO date or time (UTC when it names no zone); None for never."""
    if text is None:
        return None
    match = _DURATION.fullmatch(text.strip())
    if match:
        amount = int(match.group(1))
        if amount == 0:
            raise ConfigError(f"--expires {text!r}: a key must live for more than 0 {_UNITS[match.group(2)]}.")
        return now + timedelta(**{_UNITS[match.group(2)]: amount})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--expires {text!r}: expected a duration (30d, 12h, 90m) or an ISO date or time "
                          "(2027-01-31, 2027-01-31T12:00Z).") from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when <= now:
        raise ConfigError(f"--expires {text!r}: that time has passed already.")
    return when


def create_key(path: Path, name: str, expires: str | None = None) -> tuple[KeyEntry, str]:
    """A new key in the keys file at `path` (made if absent); → (its entry, the key itself: shown once, never stored)."""
    if not re.fullmatch(_NAME, name):
        raise ConfigError(f"--name {name!r}: expected 1–100 letters, digits, spaces, '.', '_' or '-', starting with a "
                          "letter or digit.")
    now = datetime.now(UTC)
    keys = read_keys(path) if path.exists() else KeysFile()
    key = PREFIX + secrets.token_urlsafe(32)
    entry = KeyEntry(id=f"key-{secrets.token_hex(4)}", name=name, sha256=digest(key), created_at=now,
                     expires_at=expiry(expires, now))
    write_keys(path, KeysFile(keys=[*keys.keys, entry]))
    return entry, key


def revoke_key(path: Path, key_id: str) -> KeyEntry:
    keys = read_keys(path)
    for entry in keys.keys:
        if entry.id == key_id:
            if entry.revoked_at is None:
                entry.revoked_at = datetime.now(UTC)
                write_keys(path, keys)
            return entry
    raise ConfigError(f"--keys {path}: no key {key_id!r}; `moeforge serve-key ls --keys {path}` lists them.")


@dataclass
class Verdict:
    ok: bool
    code: str = "invalid_api_key"
    message: str = "missing or invalid API key (send Authorization: Bearer <key>)"


class Keys:
    """What the server accepts: plain keys (from --api-key or the environment) and those of a keys file, read again
    whenever the file's modification time or size changes."""

    def __init__(self, plain: list[str], file: Path | None = None):
        self.plain = {digest(k) for k in plain}
        self.file = file
        self._seen: tuple | None = None
        self._entries: dict[str, KeyEntry] = {}
        if file is not None:
            self._reload(strict=True)

    def _reload(self, strict: bool = False) -> None:
        try:
            stat = self.file.stat()
            seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError as exc:
            if strict:
                raise ConfigError(f"--keys {self.file}: cannot read it ({exc.strerror or exc}). {FIX}") from None
            seen = None
        if seen == self._seen:
            return
        try:
            entries = {e.sha256: e for e in read_keys(self.file).keys}
        except ConfigError as exc:
            if strict:
                raise
            log.warning("the keys file is unreadable; the keys of its last good reading still apply: %s", exc)
            self._seen = seen
            return
        self._entries, self._seen = entries, seen

    def check(self, token: str) -> Verdict:
        if not token:
            return Verdict(False)
        hashed = digest(token)
        if hashed in self.plain:
            return Verdict(True)
        if self.file is None:
            return Verdict(False)
        self._reload()
        entry = self._entries.get(hashed)
        if entry is None:
            return Verdict(False)
        state = entry.state(datetime.now(UTC))
        if state == "expired":
            return Verdict(False, "expired_api_key", f"this API key ({entry.id}) expired at "
                                                     f"{entry.expires_at.isoformat(timespec='seconds')}")
        if state == "revoked":
            return Verdict(False, "revoked_api_key", f"this API key ({entry.id}) was revoked")
        return Verdict(True)
