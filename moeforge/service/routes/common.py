"""What every router shares: the database and settings of the app, audit lines, and list pages."""

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from moeforge.service.auth import Caller
from moeforge.service.db import Database, now
from moeforge.service.errors import APIError

MAX_PAGE = 100


def db(request: Request) -> Database:
    return request.app.state.db


def audit(database: Database, caller: Caller, action: str, resource: str | None, status: int = 200) -> None:
    from moeforge.service.schema import AuditRow

    with database.session() as s:
        s.add(AuditRow(tenant_id=caller.tenant_id, key_id=caller.key_id, action=action, resource=resource, status=status,
                       created_at=now()))


async def audit_async(database: Database, caller: Caller, action: str, resource: str | None, status: int = 200) -> None:
    await run_in_threadpool(audit, database, caller, action, resource, status)


def page(rows: list, limit: int, shape) -> dict:
    """An OpenAI list object of the first `limit` rows (rows holds limit + 1 when there are more)."""
    return {"object": "list", "data": [shape(r) for r in rows[:limit]], "has_more": len(rows) > limit}


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise APIError(400, f"limit {limit}: expected 1 to {MAX_PAGE}", param="limit")
    return limit
