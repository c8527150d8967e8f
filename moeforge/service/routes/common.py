"""What every router shares: the database and settings of the app, audit lines, and list pages."""

from fastapi import Request
from fastapi.responses import JSONResponse

from moeforge.service.auth import Caller, check_key
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


def newest_first(session, query, table, cursor, limit: int) -> list:
    """Up to limit + 1 rows of `query`, newest first, older than the `cursor` row when given (ties broken by id)."""
    if cursor is not None:
        query = query.where((table.created_at < cursor.created_at) |
                            ((table.created_at == cursor.created_at) & (table.id < cursor.id)))
    return list(session.scalars(query.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)))


def page(rows: list, limit: int, shape) -> dict:
    """An OpenAI list object of the first `limit` rows (rows holds limit + 1 when there are more)."""
    return {"object": "list", "data": [shape(r) for r in rows[:limit]], "has_more": len(rows) > limit}


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise APIError(400, f"limit {limit}: expected 1 to {MAX_PAGE}", param="limit")
    return limit


async def read(request: Request, work) -> JSONResponse:
    """A read that clients poll, in one hop off the event loop: the key check (scope `read`) and `work(session,
    caller)` in one database session on one worker thread; what `work` returns (plain JSON values) is sent as it is.
    A route with `Depends(requires(…))` takes two hops and two sessions, the key check's and its own."""
    from starlette.concurrency import run_in_threadpool

    header = request.headers.get("authorization")

    def run():
        with db(request).session() as s:
            return work(s, check_key(s, header, "read"))

    return JSONResponse(await run_in_threadpool(run))
