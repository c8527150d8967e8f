"""`/v1/keys` and `/v1/audit`: a tenant's own API keys and audit log (the `admin` scope)."""

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from moeforge.service.auth import SCOPES, Caller, check_name, check_scopes, create_key, requires, revoke_key
from moeforge.service.db import stamp
from moeforge.service.errors import APIError, not_found
from moeforge.service.routes.common import audit, check_limit, db, page

router = APIRouter(prefix="/v1", tags=["keys"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=100)
    scopes: list[str] = Field(default_factory=lambda: ["read", "write"], max_length=len(SCOPES))


def _shape(row) -> dict:
    return {"id": row.id, "object": "api_key", "name": row.name, "scopes": row.scopes.split(","),
            "created_at": stamp(row.created_at), "revoked_at": stamp(row.revoked_at)}


@router.get("/keys")
def list_keys(request: Request, caller: Caller = Depends(requires("admin"))):
    from sqlalchemy import select

    from moeforge.service.schema import KeyRow

    with db(request).session() as s:
        rows = list(s.scalars(select(KeyRow).where(KeyRow.tenant_id == caller.tenant_id).order_by(KeyRow.created_at)))
    return {"object": "list", "data": [_shape(r) for r in rows], "has_more": False}


@router.post("/keys")
def new_key(body: KeyCreate, request: Request, caller: Caller = Depends(requires("admin"))):
    from moeforge.errors import ConfigError
    from moeforge.service.schema import KeyRow

    try:
        check_name(body.name, "name")
        check_scopes(body.scopes)
    except ConfigError as exc:
        raise APIError(400, str(exc), param="name" if "name" in str(exc).split(" ")[0] else "scopes") from None
    key_id, key = create_key(db(request), caller.tenant_id, body.name, body.scopes)
    audit(db(request), caller, "POST /v1/keys", key_id)
    with db(request).session() as s:
        return {**_shape(s.get(KeyRow, key_id)), "key": key}


@router.delete("/keys/{key_id}")
def revoke(key_id: str, request: Request, caller: Caller = Depends(requires("admin"))):
    if not revoke_key(db(request), key_id, caller.tenant_id):
        raise not_found("API key", key_id, "key_id")
    audit(db(request), caller, "DELETE /v1/keys", key_id)
    return {"id": key_id, "object": "api_key", "revoked": True}


@router.get("/audit")
def audit_log(request: Request, limit: int = 100, caller: Caller = Depends(requires("admin"))):
    from sqlalchemy import select

    from moeforge.service.schema import AuditRow

    check_limit(limit)
    with db(request).session() as s:
        rows = list(s.scalars(select(AuditRow).where(AuditRow.tenant_id == caller.tenant_id)
                              .order_by(AuditRow.id.desc()).limit(limit + 1)))
    return page(rows, limit, lambda r: {"id": r.id, "object": "audit_event", "key_id": r.key_id, "action": r.action,
                                        "resource": r.resource, "status": r.status, "created_at": stamp(r.created_at)})
