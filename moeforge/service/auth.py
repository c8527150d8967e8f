"""Tenants and their API keys: only a key's sha256 is kept; a key has scopes and can be revoked.

A key reads `mfk_<24 hex: its id>_<43 characters of secret>`. A missing, malformed, unknown, wrong
or revoked key is a 401 that says which; a valid key without the scope a route needs is a 403.
"""

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from fastapi import Request

from moeforge.errors import ConfigError
from moeforge.service.db import Database, new_id, now
from moeforge.service.errors import APIError

SCOPES = ("read", "write", "admin")
_KEY = re.compile(r"mfk_([0-9a-f]{24})_([A-Za-z0-9_-]{43})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}")


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    key_id: str
    scopes: frozenset[str]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{what} {name!r}: expected 1–100 letters, digits, spaces, '.', '_' or '-', starting with a "
                          "letter or digit.")
    return name


def check_scopes(scopes) -> tuple[str, ...]:
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ConfigError(f"scopes {list(scopes)!r}: expected a non-empty list of {', '.join(SCOPES)}.")
    return tuple(s for s in SCOPES if s in scopes)


def create_key(db: Database, tenant_id: str, name: str, scopes=SCOPES) -> tuple[str, str]:
    """A new key for the tenant; → (key id, the key itself: shown once, never stored)."""
    from moeforge.service.schema import KeyRow

    scopes = check_scopes(scopes)
    hex_id = secrets.token_hex(12)
    key = f"mfk_{hex_id}_{secrets.token_urlsafe(32)}"
    with db.session() as s:
        s.add(KeyRow(id=f"key-{hex_id}", tenant_id=tenant_id, name=check_name(name, "key name"), secret_sha256=_hash(key),
                     scopes=",".join(scopes), created_at=now()))
    return f"key-{hex_id}", key


def create_tenant(db: Database, name: str) -> tuple[str, str]:
    """A new tenant with one admin key; → (tenant id, key). ConfigError if the name is taken."""
    from sqlalchemy import select

    from moeforge.service.schema import TenantRow

    check_name(name, "tenant name")
    with db.session() as s:
        if s.scalar(select(TenantRow).where(TenantRow.name == name)) is not None:
            raise ConfigError(f"a tenant named {name!r} exists already; pick another name or create a key for it with "
                              "`moeforge service key create`.")
        tenant_id = new_id("tenant")
        s.add(TenantRow(id=tenant_id, name=name, created_at=now()))
    _, key = create_key(db, tenant_id, "admin")
    return tenant_id, key


def tenant_id_of(db: Database, name: str) -> str:
    with db.session() as s:
        tenant = tenant_named(s, name)
    if tenant is None:
        raise ConfigError(f"no tenant named {name!r}; `moeforge service tenant ls` lists them.")
    return tenant


def tenant_named(session, name: str) -> str | None:
    """The id of the tenant called `name` (the subnet owner, say), or None."""
    from sqlalchemy import select

    from moeforge.service.schema import TenantRow

    return session.scalar(select(TenantRow.id).where(TenantRow.name == name))


def revoke_key(db: Database, key_id: str, tenant_id: str | None = None) -> bool:
    """Revoke a key (of `tenant_id`, when given); → False if there is no such key (or it is another tenant's)."""
    from moeforge.service.schema import KeyRow

    with db.session() as s:
        row = s.get(KeyRow, key_id)
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            return False
        if row.revoked_at is None:
            row.revoked_at = now()
    return True


def authenticate(db: Database, header: str | None) -> Caller:
    key = _parse(header)
    with db.session() as s:
        return _caller(s, key)


def check_key(session, header: str | None, scope: str) -> Caller:
    """The caller of `header`, looked up in an open session, who must hold `scope` (401 / 403 otherwise)."""
    return _scoped(_caller(session, _parse(header)), scope)


def _parse(header: str | None) -> re.Match:
    if not header:
        raise APIError(401, "no API key: send the header `Authorization: Bearer <key>`", param="Authorization",
                       code="missing_api_key")
    scheme, _, key = header.partition(" ")
    match = _KEY.fullmatch(key.strip()) if scheme.lower() == "bearer" else None
    if match is None:
        raise APIError(401, "malformed API key: expected `Authorization: Bearer mfk_…`", param="Authorization",
                       code="invalid_api_key")
    return match


def _caller(session, key: re.Match) -> Caller:
    from moeforge.service.schema import KeyRow

    row = session.get(KeyRow, f"key-{key.group(1)}")
    if row is None or not hmac.compare_digest(row.secret_sha256, _hash(key.group(0))):
        raise APIError(401, "unknown or wrong API key", param="Authorization", code="invalid_api_key")
    if row.revoked_at is not None:
        raise APIError(401, "this API key was revoked", param="Authorization", code="revoked_api_key")
    return Caller(row.tenant_id, row.id, frozenset(row.scopes.split(",")))


def _scoped(caller: Caller, scope: str) -> Caller:
    if scope not in caller.scopes:
        raise APIError(403, f"this key lacks the {scope!r} scope (it has {', '.join(sorted(caller.scopes))})",
                       code="insufficient_scope")
    return caller


def requires(scope: str):
    """A FastAPI dependency: the caller, who must hold `scope`."""
    def dependency(request: Request) -> Caller:
        return _scoped(authenticate(request.app.state.db, request.headers.get("authorization")), scope)

    return dependency
