"""`/v1/market/servers`, `/v1/market/usage`, `/v1/market/earnings` and `/v1/market/statements`: usage in, money out.

A tenant registers the public key of each `moeforge serve` it runs, uploads a day's ledger file
(`/v1/files`, purpose `usage`) and reports it here: it is verified and priced (market/usage.py),
and the revenue is split through lineage into the append-only ledger (market/ledger.py). A
tenant sees its earnings and statements as a payee; the subnet owner (the Centre's operator)
sees every payee's statements, miners' hotkeys included, and the reconciliation of each period.
"""

import hashlib
import re

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from moeforge.service.auth import Caller, check_name, requires, tenant_named
from moeforge.service.db import new_id, now, stamp
from moeforge.service.errors import APIError, not_found
from moeforge.service.routes.common import audit, check_limit, db

router = APIRouter(prefix="/v1/market", tags=["earnings"])
_PERIOD = re.compile(r"\d{4}-\d{2}(-\d{2})?")


class ServerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    public_key: str = Field(min_length=1, max_length=4_096)  # PEM: the `usage.pub` beside `moeforge serve`'s ledger key


class UsageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str = Field(max_length=64)  # a file uploaded with purpose `usage`
    server: str = Field(max_length=64)  # the registered server key that signed it


def _server_shape(row) -> dict:
    return {"id": row.id, "object": "server_key", "name": row.name, "fingerprint": row.fingerprint,
            "created_at": stamp(row.created_at)}


@router.post("/servers")
def register_server(body: ServerCreate, request: Request, caller: Caller = Depends(requires("write"))):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
    from sqlalchemy import select

    from moeforge.errors import ConfigError
    from moeforge.service.market.schema import ServerKeyRow

    try:
        check_name(body.name, "server name")
    except ConfigError as exc:
        raise APIError(400, str(exc), param="name") from None
    try:
        key = load_pem_public_key(body.public_key.encode())
    except ValueError as exc:
        raise APIError(400, f"public_key: not a PEM public key ({exc})", param="public_key", code="invalid_public_key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise APIError(400, "public_key: expected the EC (P-256) key `moeforge serve` signs its ledger with",
                       param="public_key", code="invalid_public_key")
    fingerprint = hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()
    with db(request).session() as s:
        if s.scalar(select(ServerKeyRow.id).where(ServerKeyRow.fingerprint == fingerprint)) is not None:
            raise APIError(409, "this public key is registered already (a server key belongs to one tenant)", param="public_key",
                           code="server_key_exists")
        row = ServerKeyRow(id=new_id("srv"), tenant_id=caller.tenant_id, name=body.name,
                           public_key=key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode(),
                           fingerprint=fingerprint, created_at=now())
        s.add(row)
    audit(db(request), caller, "POST /v1/market/servers", row.id)
    return _server_shape(row)


@router.get("/servers")
def list_servers(request: Request, caller: Caller = Depends(requires("read"))):
    from sqlalchemy import select

    from moeforge.service.market.schema import ServerKeyRow

    with db(request).session() as s:
        rows = list(s.scalars(select(ServerKeyRow).where(ServerKeyRow.tenant_id == caller.tenant_id).order_by(ServerKeyRow.created_at)))
    return {"object": "list", "data": [_server_shape(r) for r in rows], "has_more": False}


@router.post("/usage")
def report_usage(body: UsageCreate, request: Request, caller: Caller = Depends(requires("write"))):
    """Verify and price a usage ledger file; a refused one is kept (GET /v1/market/usage lists it) with why."""
    from moeforge.service.market.schema import ServerKeyRow
    from moeforge.service.market.usage import ingest, report_shape
    from moeforge.service.routes.files import owned_file

    settings = request.app.state.settings
    with db(request).session() as s:
        f = owned_file(s, caller.tenant_id, body.file, "file")
        if f.purpose != "usage":
            raise APIError(400, f"file {body.file} has purpose {f.purpose!r}; upload the ledger with purpose `usage`",
                           param="file", code="wrong_purpose")
        server = s.get(ServerKeyRow, body.server) if len(body.server) <= 40 else None
        if server is None or server.tenant_id != caller.tenant_id:
            raise not_found("server key", body.server, "server")
    raw = request.app.state.store.get(f.sha256)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, f"{f.filename}: not UTF-8 text", param="file", code="usage_ledger_invalid") from None
    with db(request).session() as s:
        row = ingest(s, request.app.state.library, tenant_id=caller.tenant_id, server=server, name=f.filename, text=text,
                     file_sha256=f.sha256, subnet_owner=tenant_named(s, settings.subnet_owner))
        s.flush()
        out = report_shape(s, row)
    audit(db(request), caller, "POST /v1/market/usage", row.id)
    return out


@router.get("/usage")
def list_usage(request: Request, limit: int = 100, caller: Caller = Depends(requires("read"))):
    from sqlalchemy import select

    from moeforge.service.market.schema import UsageReportRow
    from moeforge.service.market.usage import report_shape

    check_limit(limit)
    with db(request).session() as s:
        rows = list(s.scalars(select(UsageReportRow).where(UsageReportRow.tenant_id == caller.tenant_id)
                              .order_by(UsageReportRow.created_at.desc(), UsageReportRow.id).limit(limit + 1)))
        return {"object": "list", "data": [report_shape(s, r) for r in rows[:limit]], "has_more": len(rows) > limit}


def _period(period: str | None) -> str:
    if period is None:
        return now().strftime("%Y-%m")
    if not _PERIOD.fullmatch(period):
        raise APIError(400, f"period {period!r}: expected a month YYYY-MM or a day YYYY-MM-DD", param="period")
    return period


def _payee(session, request: Request, caller: Caller, payee: str | None) -> str | None:
    """The account whose statements the caller may read: its own; any (None: all) for the subnet owner's admin keys."""
    operator = tenant_named(session, request.app.state.settings.subnet_owner) == caller.tenant_id and "admin" in caller.scopes
    if payee is None:
        return None if operator else f"tenant:{caller.tenant_id}"
    if payee != f"tenant:{caller.tenant_id}" and not operator:
        raise APIError(403, f"payee {payee!r}: you may read your own statements (tenant:{caller.tenant_id}); the subnet "
                       "owner reads everyone's", param="payee", code="not_your_payee")
    return payee


@router.get("/earnings")
def earnings(request: Request, months: int = 12, caller: Caller = Depends(requires("read"))):
    """Your earnings as a payee over the last `months` calendar months: per month, per day and per entry."""
    from collections import defaultdict

    from sqlalchemy import select

    from moeforge.service.market.schema import LedgerLineRow

    if not 1 <= months <= 120:
        raise APIError(400, f"months {months}: expected 1 to 120", param="months")
    year, month = (int(x) for x in now().strftime("%Y-%m").split("-"))
    first = year * 12 + month - 1 - (months - 1)  # the oldest calendar month shown
    cutoff = f"{first // 12:04d}-{first % 12 + 1:02d}"
    account = f"tenant:{caller.tenant_id}"
    by_day, by_month, by_entry = defaultdict(int), defaultdict(int), defaultdict(int)
    with db(request).session() as s:
        for period, entry, micros in s.execute(select(LedgerLineRow.period, LedgerLineRow.entry_id, LedgerLineRow.amount_micros)
                                               .where(LedgerLineRow.account == account)):
            by_day[period] += micros
            by_month[period[:7]] += micros
            if period[:7] >= cutoff:
                by_entry[entry] += micros
    kept = [m for m in sorted(by_month) if m >= cutoff]
    return {"object": "earnings", "payee": account, "total_micros": sum(by_month[m] for m in kept),
            "months": [{"period": m, "micros": by_month[m]} for m in kept],
            "days": [{"period": d, "micros": by_day[d]} for d in sorted(by_day) if d[:7] in kept],
            "entries": [{"model": e, "micros": v} for e, v in sorted(by_entry.items(), key=lambda p: (-p[1], p[0] or ""))]}


@router.get("/statements")
def statements(request: Request, period: str | None = None, payee: str | None = None, format: str = "json",
               caller: Caller = Depends(requires("read"))):
    """Payout statements for a period (a month or a day), per payee, as JSON or CSV; with the period's reconciliation."""
    from dataclasses import asdict

    from moeforge.service.market.ledger import reconcile, statements as make_statements, statements_csv

    if format not in ("json", "csv"):
        raise APIError(400, f"format {format!r}: expected json or csv", param="format")
    period = _period(period)
    with db(request).session() as s:
        account = _payee(s, request, caller, payee)
        rows = make_statements(s, period, account)
        check = reconcile(s, period) if account is None else None
    audit(db(request), caller, "GET /v1/market/statements", period)
    if format == "csv":
        return Response(statements_csv(rows), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="statements-{period}.csv"'})
    out = {"object": "list", "period": period, "data": [asdict(st) for st in rows], "has_more": False}
    if check is not None:
        out["reconciliation"] = {**asdict(check), "exact": check.exact}
    return out
