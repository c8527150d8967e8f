"""Usage ledgers handed in by a customer: verified against the server key it registered, then priced.

A ledger file (`moeforge serve`, deploy/usage.py) is one UTC day of one server: hash-chained,
signed records of requests with their routed-expert hits per library entry. A report is refused
and kept, with why, when any record fails its chain, hash or signature, when it mixes days or
models, when it is for a day to come, when it replays what was handed in already, or when it
forks from it (a record the Centre priced reads differently now). An accepted report prices only
the records after the last one handed in for that server, model and day.

What is priced: an entry's routed tokens in a request are the request's tokens (prompt +
completion) times the entry's share of the request's expert routings, so an entry is paid for
the share of the routed computation its experts did. Per report and entry, routed tokens × the
grant's price per million, rounded down (in the customer's favour), is the revenue. An entry the
customer owns is `own`; an unowned, unlisted one (the shared library) or a free listing is
`free`; a listing whose grant the customer holds (or held when it exported a bundle: bundles
keep their terms) is `priced`; anything else is `unlicensed`, and an id the library does not know
is `unknown`: both are recorded and flagged, never paid out.
"""

from collections import Counter
from datetime import UTC, datetime
from fractions import Fraction

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moeforge.service.db import dumps, loads, new_id, now
from moeforge.service.errors import APIError
from moeforge.service.market.ledger import lineage_nodes, post_revenue
from moeforge.service.market.terms import MICROS, Terms

MAX_PROBLEMS = 20  # shown of a refused report


class _Record(BaseModel):
    """The fields of a ledger record the Centre prices on (the signature covers them all)."""

    model_config = ConfigDict(extra="allow")
    version: int
    period: str = Field(pattern=r"\d{4}-\d{2}-\d{2}")
    seq: int = Field(ge=0)
    model: str = Field(min_length=1, max_length=200)
    prompt_tokens: int = Field(ge=0, le=10**9)
    completion_tokens: int = Field(ge=0, le=10**9)
    entries: dict[str, int]
    hash: str


def ingest(session, library, *, tenant_id: str, server, name: str, text: str, file_sha256: str, subnet_owner: str | None):
    """Verify and price one ledger file (its `text`, named `name`) from `server` (a ServerKeyRow) → the report row.

    Raises APIError (400 invalid, 409 replayed or forked) after recording the refused report."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from moeforge.deploy.usage import verify_records

    key = load_pem_public_key(server.public_key.encode())
    raw, problems = verify_records(name, text, key, key_name=f"server key {server.id} ({server.name})")
    records = []
    for number, record in enumerate(raw, start=1):
        try:
            records.append(_Record.model_validate(record))
        except ValidationError as exc:
            first = exc.errors()[0]
            problems.append(f"{name}:{number}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
    if not raw:
        problems.append(f"{name}: no ledger records")
    if not problems:
        problems += _shape_problems(name, records)
    base = dict(tenant_id=tenant_id, server=server, name=name, file_sha256=file_sha256)
    if problems:
        _refuse(session, **base, records=records, problems=problems, status=400, code="usage_ledger_invalid")
    period, model = records[0].period, records[0].model
    last = _last_accepted(session, server.id, model, period)
    if last is not None:
        replayed = [f"{name}: every record ({model} on {period}, up to {records[-1].seq}) was handed in already, with {last.id}"]
        if records[-1].seq < last.last_seq:
            _refuse(session, **base, records=records, status=409, code="usage_ledger_replayed", problems=replayed)
        if records[last.last_seq].hash != last.last_hash:
            _refuse(session, **base, records=records, status=409, code="usage_ledger_forked", problems=[
                f"{name}: record {last.last_seq} of {model} on {period} differs from the one handed in with {last.id}: "
                "this ledger forks from what was priced (records were changed or rewritten)"])
        if records[-1].seq == last.last_seq:
            _refuse(session, **base, records=records, status=409, code="usage_ledger_replayed", problems=replayed)
    new = [r for r in records if last is None or r.seq > last.last_seq]
    return _price(session, library, base, new, subnet_owner)


def _shape_problems(name: str, records: list[_Record]) -> list[str]:
    problems = []
    days, models = {r.period for r in records}, {r.model for r in records}
    if len(days) > 1 or len(models) > 1:
        problems.append(f"{name}: one ledger file is one day of one model; this one has days {sorted(days)} and models "
                        f"{sorted(models)}")
    if any(r.seq != i for i, r in enumerate(records)):
        problems.append(f"{name}: records are not numbered 0, 1, 2, … in order (seq)")
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    if any(d > today for d in days):
        problems.append(f"{name}: the day {max(days)} is still to come (today is {today} UTC)")
    for i, r in enumerate(records, start=1):
        bad = [k for k, v in r.entries.items() if v < 0 or (k != "base" and not _is_entry(k))]
        if bad:
            problems.append(f"{name}:{i}: entries {bad[:3]} are neither 'base' nor library entry ids with non-negative hits")
    return problems


def _is_entry(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _last_accepted(session, server_id: str, model: str, period: str):
    from sqlalchemy import select

    from moeforge.service.market.schema import UsageReportRow

    return session.scalar(select(UsageReportRow).where(UsageReportRow.server_id == server_id, UsageReportRow.model == model,
                                                      UsageReportRow.period == period, UsageReportRow.status == "accepted")
                          .order_by(UsageReportRow.last_seq.desc()).limit(1))


def _refuse(session, *, tenant_id, server, name, file_sha256, records, problems, status: int, code: str):
    from moeforge.service.market.schema import UsageReportRow

    row = UsageReportRow(id=new_id("usage"), tenant_id=tenant_id, server_id=server.id, file_sha256=file_sha256,
                         model=records[0].model if records else "", period=records[0].period if records else "",
                         status="refused", requests=len(records), tokens=0, charged_micros=0,
                         problems=dumps(problems[:MAX_PROBLEMS]), created_at=now())
    session.add(row)
    session.commit()  # the refusal is kept: the APIError below must not roll it back
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise APIError(status, f"usage ledger refused ({row.id}): {'; '.join(problems[:3])}{more}", param="file", code=code)


def _price(session, library, base: dict, records: list[_Record], subnet_owner: str | None):
    from moeforge.service.market.schema import UsageLineRow, UsageReportRow

    routed: dict[str, Fraction] = {}
    hits: Counter = Counter()
    for r in records:
        total = sum(r.entries.values())
        if total <= 0:
            continue
        for entry, n in r.entries.items():
            if entry != "base" and n > 0:
                routed[entry] = routed.get(entry, Fraction(0)) + Fraction((r.prompt_tokens + r.completion_tokens) * n, total)
                hits[entry] += n
    report = UsageReportRow(id=new_id("usage"), tenant_id=base["tenant_id"], server_id=base["server"].id,
                            file_sha256=base["file_sha256"], model=records[0].model, period=records[0].period, status="accepted",
                            first_seq=records[0].seq, last_seq=records[-1].seq, last_hash=records[-1].hash,
                            requests=len(records), tokens=sum(r.prompt_tokens + r.completion_tokens for r in records),
                            charged_micros=0, problems="[]", created_at=now())
    session.add(report)
    session.flush()
    node = lineage_nodes(session, subnet_owner)
    for entry in sorted(routed):
        status, grant = classify(session, library, base["tenant_id"], entry)
        charge = 0
        if status == "priced":
            price = Terms.model_validate_json(grant.terms).price
            charge = int(routed[entry] * price.micros / MICROS)  # floor: non-negative
            if charge:
                post_revenue(session, kind="usage", period=report.period, customer=base["tenant_id"], entry=entry, micros=charge,
                             source=report.id, node=node)
        report.charged_micros += charge
        session.add(UsageLineRow(report_id=report.id, entry_id=entry, hits=hits[entry], routed_tokens=float(routed[entry]),
                                 status=status, grant_id=grant.id if grant is not None else None, charged_micros=charge))
    return report


def classify(session, library, tenant_id: str, entry: str):
    """(status, grant) of the tenant's use of `entry`: own | free | priced | unlicensed | unknown (see the module doc)."""
    from sqlalchemy import select

    from moeforge.errors import ArtifactNotFound
    from moeforge.service.market.schema import ListingRow
    from moeforge.service.schema import EntryOwnerRow

    try:
        library.catalog.get(entry)
    except ArtifactNotFound:
        return "unknown", None
    owners = set(session.scalars(select(EntryOwnerRow.tenant_id).where(EntryOwnerRow.entry_id == entry)))
    listing = session.scalar(select(ListingRow).where(ListingRow.entry_id == entry))
    if tenant_id in owners or (listing is not None and listing.owner_tenant == tenant_id):
        return "own", None
    if listing is None:
        return ("unlicensed", None) if owners else ("free", None)
    grant = usable_grant(session, tenant_id, entry, for_usage=True)
    if grant is None:
        return ("free", None) if listing.visibility == "public" and listing.price_kind == "free" else ("unlicensed", None)
    return ("priced" if Terms.model_validate_json(grant.terms).price.kind == "per_mtok" else "free"), grant


def usable_grant(session, tenant_id: str, entry: str, *, for_usage: bool = False):
    """The tenant's active grant for `entry`; for usage, also a revoked one a bundle was exported under before the revocation."""
    from sqlalchemy import select

    from moeforge.service.market.schema import GrantRow

    rows = list(session.scalars(select(GrantRow).where(GrantRow.tenant_id == tenant_id, GrantRow.entry_id == entry)
                                .order_by(GrantRow.created_at.desc())))
    for row in rows:
        if row.status == "active":
            return row
    if for_usage:
        for row in rows:
            if row.status == "revoked" and row.exported_at is not None:
                return row
    return None


def report_shape(session, row) -> dict:
    from sqlalchemy import select

    from moeforge.service.db import stamp
    from moeforge.service.market.schema import UsageLineRow

    lines = [{"entry": ln.entry_id, "hits": ln.hits, "routed_tokens": round(ln.routed_tokens, 3), "status": ln.status,
              "grant": ln.grant_id, "charged_micros": ln.charged_micros}
             for ln in session.scalars(select(UsageLineRow).where(UsageLineRow.report_id == row.id).order_by(UsageLineRow.entry_id))]
    return {"id": row.id, "object": "usage_report", "server": row.server_id, "model": row.model, "period": row.period,
            "status": row.status, "records": [row.first_seq, row.last_seq] if row.first_seq is not None else None,
            "requests": row.requests, "tokens": row.tokens, "charged_micros": row.charged_micros,
            "problems": loads(row.problems, []), "lines": lines,
            "flagged": [ln for ln in lines if ln["status"] in ("unlicensed", "unknown")], "created_at": stamp(row.created_at)}
