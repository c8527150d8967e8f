"""`/v1/market/listings` and `/v1/market/grants`: library entries listed with licences and prices, and access to them.

An entry's owner lists it (the tenant whose job made it; for an entry of the shared library, the
subnet owner). A public listing grants access to whoever asks, a gated one waits for the owner's
approval, a private one is seen by its owner alone (anyone else gets the 404 of an id that does
not exist). A grant copies the listing's licence and price: later price changes do not reach it,
and a licence cannot change while any grant is active.
"""

import json
import re

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from moeforge.service.auth import Caller, requires, tenant_named
from moeforge.service.db import loads, new_id, now, stamp
from moeforge.service.errors import APIError, not_found
from moeforge.service.market.search import SAMPLE_TOKENS, SORTS, Filters, find, order
from moeforge.service.market.terms import Licence, Price, Terms, Visibility
from moeforge.service.routes.common import audit, check_limit, db

router = APIRouter(prefix="/v1/market", tags=["market"])
MAX_SAMPLE_BYTES = 8 * 1024 * 1024
GRANT_STATES = ("pending", "active", "rejected", "revoked")
_TAG = re.compile(r"[a-z0-9][a-z0-9.+-]{0,49}")
MEASURED = {"domain_loss": "held-out loss of the domain's data (nats per token) on rows no miner trained on, base experts "
                           "before and the entry's after",
            "general_ppl": "WikiText-2 test perplexity, base experts before and the entry's after (general ability kept)"}


def _tags(value: list[str]) -> list[str]:
    bad = [t for t in value if not _TAG.fullmatch(t)]
    if bad:
        raise ValueError(f"tags {bad[:3]}: expected lower-case words (letters, digits, '.', '+', '-'), up to 50 characters")
    return sorted(set(value))


class ListingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(pattern=r"^[0-9a-f]{64}$")
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=20_000)
    tags: list[str] = Field(default_factory=list, max_length=20)
    licence: Licence | None = None  # default: the entry's own licence
    price: Price = Price()
    visibility: Visibility = "public"

    _check_tags = field_validator("tags")(classmethod(lambda cls, v: _tags(v)))


class ListingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=20_000)
    tags: list[str] | None = Field(None, max_length=20)
    licence: Licence | None = None
    price: Price | None = None
    visibility: Visibility | None = None

    _check_tags = field_validator("tags")(classmethod(lambda cls, v: v if v is None else _tags(v)))


class AccessRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field("", max_length=2_000)  # why you want it (the owner of a gated listing reads it)


class DirectGrant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(min_length=1, max_length=100)  # the tenant's name
    note: str = Field("", max_length=2_000)


# --- reading ---------------------------------------------------------------------------------------------------------


def _access(session, caller: Caller, rows: list) -> dict[str, str]:
    """listing id → the caller's access to it: owner, none, or its latest grant's status (one query for all rows)."""
    from sqlalchemy import select

    from moeforge.service.market.schema import GrantRow

    out = {r.id: "owner" if r.owner_tenant == caller.tenant_id else "none" for r in rows}
    others = [r.id for r in rows if out[r.id] == "none"]
    if others:
        grants = session.execute(select(GrantRow.listing_id, GrantRow.status).where(
            GrantRow.listing_id.in_(others), GrantRow.tenant_id == caller.tenant_id).order_by(GrantRow.created_at))
        for listing_id, status in grants:
            out[listing_id] = status  # the latest wins
    return out


def shape(session, caller: Caller, row, relevance: dict | None = None, access: str | None = None) -> dict:
    licence = Licence.model_validate_json(row.licence)
    price = Price(kind=row.price_kind, micros=row.price_micros)
    return {"id": row.id, "object": "listing", "model": row.entry_id, "title": row.title, "description": row.description,
            "tags": loads(row.tags, []), "domain": row.domain, "base_model": row.base_model,
            "licence": licence.model_dump(mode="json"), "licence_id": licence.id,
            "price": {**price.model_dump(mode="json"), "text": price.describe()}, "visibility": row.visibility,
            "owned_by": "you" if row.owner_tenant == caller.tenant_id else "another tenant",
            "metrics": {"domain_gain": row.domain_gain, "general_ppl_change": row.general_ppl_change},
            "access": access or _access(session, caller, [row])[row.id], "relevance": relevance,
            "created_at": stamp(row.created_at), "updated_at": stamp(row.updated_at)}


def visible_listing(session, caller: Caller, listing_id: str):
    from moeforge.service.market.schema import ListingRow

    row = session.get(ListingRow, listing_id) if len(listing_id) <= 40 else None
    if row is None or (row.visibility == "private" and row.owner_tenant != caller.tenant_id):
        raise not_found("listing", listing_id, "listing_id")
    return row


def owned_listing(session, caller: Caller, listing_id: str):
    row = visible_listing(session, caller, listing_id)
    if row.owner_tenant != caller.tenant_id:
        raise APIError(403, f"listing {listing_id} is another tenant's: only its owner changes it or decides on its grants",
                       param="listing_id", code="not_listing_owner")
    return row


@router.get("/listings")
def search(request: Request, q: str | None = None, domain: str | None = None, base_model: str | None = None,
           licence: str | None = None, price: str | None = None, max_price_micros: int | None = None,
           min_gain: float | None = None, mine: bool = False, sort: str = "relevance", sample: str | None = None,
           limit: int = 50, caller: Caller = Depends(requires("read"))):
    """Listings you may see, filtered; `sample`: one of your files, to order by routing match to your data."""
    check_limit(limit)
    if sort not in SORTS:
        raise APIError(400, f"sort {sort!r}: expected one of {', '.join(SORTS)}", param="sort")
    if price is not None and price not in ("free", "per_mtok", "per_export"):
        raise APIError(400, f"price {price!r}: expected free, per_mtok or per_export", param="price")
    if q is not None and len(q) > 200:
        raise APIError(400, "q: at most 200 characters", param="q")
    f = Filters(q=q or None, domain=domain, base_model=base_model, licence=licence, price=price, max_price_micros=max_price_micros,
                min_gain=min_gain, mine=mine, sort=sort)
    similarity = _sample_similarity(request, caller, sample) if sample is not None else None
    with db(request).session() as s:
        rows = find(s, caller.tenant_id, f)
        ordered = order(rows, f, similarity)
        access = _access(s, caller, [r for r, _ in ordered[:limit]])
        data = [shape(s, caller, r, rel, access[r.id]) for r, rel in ordered[:limit]]
    return {"object": "list", "data": data, "has_more": len(ordered) > limit, "total": len(ordered)}


def _sample_similarity(request: Request, caller: Caller, file_id: str) -> dict[str, float]:
    """Routing similarity of every entry on the default base to the caller's file (profiled once, then cached)."""
    from moeforge.service.routes.files import owned_file

    with db(request).session() as s:
        f = owned_file(s, caller.tenant_id, file_id)
    if f.status != "processed" or f.purpose != "fine-tune":
        raise APIError(400, f"file {file_id} is a {f.purpose} file, {f.status}; a sample must be a processed (validated) "
                       "fine-tune file", param="sample")
    if f.bytes > MAX_SAMPLE_BYTES:  # the web process profiles it: keep that bounded
        raise APIError(400, f"file {file_id} is {f.bytes:,} bytes; a search sample may be up to {MAX_SAMPLE_BYTES:,} (upload "
                       "a few hundred records of your data)", param="sample", code="sample_too_large")
    state = request.app.state
    profile, background = state.matcher.sample_profile(f.sha256, state.settings.default_base,
                                                       lambda: _profile_sample(state, f.filename, f.sha256))
    library = state.library
    digest = library.catalog.background(profile.base_fingerprint) or ""
    entries = [e.id for e in library.catalog.entries(base_fingerprint=profile.base_fingerprint)]
    return state.matcher.similarity(profile, background, digest, entries)


def _profile_sample(state, filename: str, sha256: str):
    """(the file's routing profile on the default base, the base's background profile)."""
    import tempfile
    from pathlib import Path

    from moeforge.cli.inputs import load_checkpoint
    from moeforge.data.readers import DataSpec, read_records
    from moeforge.library.match import background_profile
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.profile.stats import ProfileConfig, default_seq_len, profile_records

    settings = state.settings
    model, tokenizer = load_checkpoint(Path(settings.bases[settings.default_base]), settings.device)
    fingerprint = model_fingerprint(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        path.write_bytes(state.store.get(sha256))
        records = read_records(path, DataSpec(on_error="skip")).records
    seq_len = default_seq_len(model)
    profile = profile_records(model, tokenizer, records, ProfileConfig(tokens=SAMPLE_TOKENS, seq_len=seq_len, saliency=False),
                              base_fingerprint=fingerprint)
    return profile, background_profile(state.library, model, tokenizer, fingerprint, seq_len=seq_len)


@router.get("/listings/{listing_id}")
def retrieve(listing_id: str, request: Request, caller: Caller = Depends(requires("read"))):
    """A listing with its model card, metrics and how they were measured, lineage and contributors."""
    from moeforge.library.card import model_card

    library = request.app.state.library
    with db(request).session() as s:
        row = visible_listing(s, caller, listing_id)
        out = shape(s, caller, row)
        parents_listed = _listing_ids(s, caller, [p for p, _, _ in library.catalog.parents(row.entry_id)])
        children_listed = _listing_ids(s, caller, library.catalog.children(row.entry_id))
    manifest = library.manifest(row.entry_id)
    summary = library.catalog.get(row.entry_id)
    m = manifest.metrics
    out["metrics"].update({"domain_loss_before": m.domain_loss_before, "domain_loss_after": m.domain_loss_after,
                           "domain_tokens": m.domain_tokens, "general_ppl_before": m.general_ppl_before,
                           "general_ppl_after": m.general_ppl_after, "tasks": dict(m.tasks), "measured": MEASURED})
    out.update({"card": model_card(row.entry_id, manifest, created_at=summary.created_at), "experts": len(manifest.slots),
                "slots": [list(x) for x in manifest.slots], "source": manifest.source,
                "lineage": [{"entry": p.entry, "relation": p.relation, "experts": p.slots, "listing": parents_listed.get(p.entry)}
                            for p in manifest.parents],
                "children": [{"entry": c, "listing": children_listed.get(c)} for c in library.catalog.children(row.entry_id)],
                "contributors": [{"id": c.id, "role": c.role, "share": c.share} for c in manifest.contributors],
                "heatmap": f"/v1/market/listings/{row.id}/heatmap.png" if manifest.profile else None})
    return out


def _listing_ids(session, caller: Caller, entries: list[str]) -> dict[str, str]:
    """entry → listing id, for the entries among `entries` listed where the caller may see them."""
    from sqlalchemy import select

    from moeforge.service.market.schema import ListingRow

    if not entries:
        return {}
    rows = session.execute(select(ListingRow.entry_id, ListingRow.id).where(
        ListingRow.entry_id.in_(entries), (ListingRow.visibility != "private") | (ListingRow.owner_tenant == caller.tenant_id)))
    return dict(rows.all())


@router.get("/listings/{listing_id}/heatmap.png")
async def heatmap(listing_id: str, request: Request, caller: Caller = Depends(requires("read"))):
    from moeforge.service.routes.models import _heatmap_png

    def load():
        with db(request).session() as s:
            row = visible_listing(s, caller, listing_id)
        return _heatmap_png(request.app.state.library, row.entry_id, row.domain)

    png = await run_in_threadpool(load)
    if png is None:
        raise not_found("routing profile of listing", listing_id, "listing_id")
    return Response(png, media_type="image/png")


# --- listing ---------------------------------------------------------------------------------------------------------


def _check_may_list(session, request: Request, caller: Caller, entry_id: str) -> None:
    """The caller owns `entry_id` (or is the subnet owner, for a shared one): else 404 for another tenant's entry, 403
    for a shared one."""
    from sqlalchemy import select

    from moeforge.errors import ArtifactNotFound
    from moeforge.service.schema import EntryOwnerRow

    owners = set(session.scalars(select(EntryOwnerRow.tenant_id).where(EntryOwnerRow.entry_id == entry_id)))
    try:
        summary = request.app.state.library.catalog.get(entry_id)
    except ArtifactNotFound:
        summary = None
    if summary is None or (owners and caller.tenant_id not in owners):
        raise not_found("model of yours", entry_id, "model")
    if summary.retired:
        raise APIError(400, f"model {entry_id} is retired ({summary.retired_reason}); a retired entry is not listed",
                       param="model", code="model_retired")
    if not owners:
        if tenant_named(session, request.app.state.settings.subnet_owner) != caller.tenant_id:
            raise APIError(403, f"model {entry_id} belongs to the shared library: only the subnet owner "
                           f"({request.app.state.settings.subnet_owner!r}) lists it", param="model", code="not_entry_owner")


@router.post("/listings")
def create_listing(body: ListingCreate, request: Request, caller: Caller = Depends(requires("write"))):
    from sqlalchemy import select

    from moeforge.library.entry import SPDX_LICENSES
    from moeforge.service.market.schema import ListingRow

    library = request.app.state.library
    with db(request).session() as s:
        _check_may_list(s, request, caller, body.model)
        existing = s.scalar(select(ListingRow.id).where(ListingRow.entry_id == body.model))
        if existing is not None:
            raise APIError(409, f"model {body.model} is listed already ({existing}); change that listing with PATCH",
                           param="model", code="already_listed")
        manifest = library.manifest(body.model)
        licence = body.licence
        if licence is None:
            if manifest.license not in SPDX_LICENSES:
                raise APIError(400, f"the entry's licence {manifest.license} is a LicenseRef-: give `licence.custom` with its "
                               "text and terms", param="licence", code="licence_text_needed")
            licence = Licence(spdx=manifest.license)
        m = manifest.metrics
        ppl = (m.general_ppl_after / m.general_ppl_before - 1) if m.general_ppl_before and m.general_ppl_after else None
        when = now()
        row = ListingRow(id=new_id("lst"), entry_id=body.model, owner_tenant=caller.tenant_id, title=body.title,
                         description=body.description, tags=json.dumps(body.tags), licence=licence.model_dump_json(),
                         licence_id=licence.id, price_kind=body.price.kind, price_micros=body.price.micros,
                         visibility=body.visibility, domain=manifest.domain, base_model=manifest.base_model,
                         base_fingerprint=manifest.base_fingerprint, domain_gain=m.domain_gain, general_ppl_change=ppl,
                         created_at=when, updated_at=when)
        s.add(row)
        s.flush()
        out = shape(s, caller, row)
    audit(db(request), caller, "POST /v1/market/listings", row.id)
    return out


@router.patch("/listings/{listing_id}")
def update_listing(listing_id: str, body: ListingUpdate, request: Request, caller: Caller = Depends(requires("write"))):
    from sqlalchemy import func, select

    from moeforge.service.market.schema import GrantRow

    with db(request).session() as s:
        row = owned_listing(s, caller, listing_id)
        if body.licence is not None and body.licence.model_dump_json() != row.licence:
            active = s.scalar(select(func.count()).select_from(GrantRow).where(GrantRow.listing_id == row.id,
                                                                               GrantRow.status == "active"))
            if active:
                raise APIError(409, f"listing {listing_id} has {active} active grant(s) on its licence {row.licence_id}: "
                               "revoke them (or list the entry anew under other terms) before changing the licence",
                               param="licence", code="licence_has_grants")
            row.licence, row.licence_id = body.licence.model_dump_json(), body.licence.id
        for name in ("title", "description", "visibility"):
            if getattr(body, name) is not None:
                setattr(row, name, getattr(body, name))
        if body.tags is not None:
            row.tags = json.dumps(body.tags)
        if body.price is not None:
            row.price_kind, row.price_micros = body.price.kind, body.price.micros
        row.updated_at = now()
        out = shape(s, caller, row)
    audit(db(request), caller, "PATCH /v1/market/listings", listing_id)
    return out


# --- grants ----------------------------------------------------------------------------------------------------------


def grant_shape(session, row) -> dict:
    from moeforge.service.market.schema import ListingRow
    from moeforge.service.schema import TenantRow

    listing = session.get(ListingRow, row.listing_id)
    tenant = session.get(TenantRow, row.tenant_id)
    return {"id": row.id, "object": "grant", "listing": row.listing_id, "title": listing.title, "model": row.entry_id,
            "tenant": tenant.name, "status": row.status, "terms": loads(row.terms), "note": row.note,
            "created_at": stamp(row.created_at), "decided_at": stamp(row.decided_at), "exported_at": stamp(row.exported_at),
            "revoked_at": stamp(row.revoked_at)}


def _terms(row) -> str:
    return Terms(licence=Licence.model_validate_json(row.licence), price=Price(kind=row.price_kind, micros=row.price_micros)
                 ).model_dump_json()


def _new_grant(session, listing, tenant_id: str, note: str, *, active: bool):
    """A grant on the listing's current terms: active (decided now) or pending the owner's decision."""
    from moeforge.service.market.schema import GrantRow

    when = now()
    grant = GrantRow(id=new_id("grant"), listing_id=listing.id, entry_id=listing.entry_id, tenant_id=tenant_id,
                     status="active" if active else "pending", terms=_terms(listing), note=note, created_at=when,
                     decided_at=when if active else None)
    session.add(grant)
    session.flush()
    return grant


def _activate(grant, listing) -> None:
    """A pending grant approved: on the listing's terms as they are now."""
    grant.status, grant.decided_at, grant.terms = "active", now(), _terms(listing)


def _open_grant(session, listing_id: str, tenant_id: str):
    from sqlalchemy import select

    from moeforge.service.market.schema import GrantRow

    return session.scalar(select(GrantRow).where(GrantRow.listing_id == listing_id, GrantRow.tenant_id == tenant_id,
                                                 GrantRow.status.in_(("pending", "active"))))


@router.post("/listings/{listing_id}/access")
def request_access(listing_id: str, body: AccessRequest, request: Request, caller: Caller = Depends(requires("write"))):
    """Ask for a grant: given at once on a public listing (on its current terms), pending the owner's approval if gated."""
    with db(request).session() as s:
        row = visible_listing(s, caller, listing_id)
        if row.owner_tenant == caller.tenant_id:
            raise APIError(400, f"listing {listing_id} is yours: an owner needs no grant", param="listing_id", code="own_listing")
        if (existing := _open_grant(s, row.id, caller.tenant_id)) is not None:
            return grant_shape(s, existing)
        if row.visibility == "gated" and not body.note.strip():
            raise APIError(400, "this listing is gated: say in `note` what you will use it for (its owner decides)",
                           param="note", code="note_needed")
        grant = _new_grant(s, row, caller.tenant_id, body.note, active=row.visibility == "public")
        out = grant_shape(s, grant)
    audit(db(request), caller, "POST /v1/market/listings/access", grant.id)
    return out


@router.post("/listings/{listing_id}/grants")
def grant_directly(listing_id: str, body: DirectGrant, request: Request, caller: Caller = Depends(requires("write"))):
    """The owner grants a tenant access (by name) on the listing's current terms."""
    from sqlalchemy import select

    from moeforge.service.schema import TenantRow

    with db(request).session() as s:
        row = owned_listing(s, caller, listing_id)
        tenant = s.scalar(select(TenantRow).where(TenantRow.name == body.tenant))
        if tenant is None:
            raise APIError(400, f"no tenant named {body.tenant!r}", param="tenant", code="tenant_not_found")
        if tenant.id == caller.tenant_id:
            raise APIError(400, "an owner needs no grant", param="tenant", code="own_listing")
        grant = _open_grant(s, row.id, tenant.id)
        if grant is None:
            grant = _new_grant(s, row, tenant.id, body.note, active=True)
        elif grant.status == "pending":
            _activate(grant, row)
        out = grant_shape(s, grant)
    audit(db(request), caller, "POST /v1/market/listings/grants", out["id"])
    return out


@router.get("/grants")
def list_grants(request: Request, role: str = "holder", status: str | None = None, limit: int = 100,
                caller: Caller = Depends(requires("read"))):
    """Grants you hold (role=holder) or grants on your listings (role=owner)."""
    from sqlalchemy import select

    from moeforge.service.market.schema import GrantRow, ListingRow

    check_limit(limit)
    if role not in ("holder", "owner"):
        raise APIError(400, f"role {role!r}: expected holder or owner", param="role")
    if status is not None and status not in GRANT_STATES:
        raise APIError(400, f"status {status!r}: expected one of {', '.join(GRANT_STATES)}", param="status")
    with db(request).session() as s:
        q = select(GrantRow)
        if role == "holder":
            q = q.where(GrantRow.tenant_id == caller.tenant_id)
        else:
            q = q.join(ListingRow, ListingRow.id == GrantRow.listing_id).where(ListingRow.owner_tenant == caller.tenant_id)
        if status is not None:
            q = q.where(GrantRow.status == status)
        rows = list(s.scalars(q.order_by(GrantRow.created_at.desc(), GrantRow.id).limit(limit + 1)))
        return {"object": "list", "data": [grant_shape(s, r) for r in rows[:limit]], "has_more": len(rows) > limit}


def _decide(request: Request, caller: Caller, grant_id: str, action: str) -> dict:
    from moeforge.service.market.schema import GrantRow, ListingRow

    with db(request).session() as s:
        grant = s.get(GrantRow, grant_id) if len(grant_id) <= 40 else None
        listing = s.get(ListingRow, grant.listing_id) if grant is not None else None
        is_owner = listing is not None and listing.owner_tenant == caller.tenant_id
        if grant is None or not (is_owner or (action == "revoke" and grant.tenant_id == caller.tenant_id)):
            raise not_found("grant", grant_id, "grant_id")
        allowed = {"approve": ("pending",), "reject": ("pending",), "revoke": ("pending", "active")}[action]
        if grant.status not in allowed:
            raise APIError(409, f"grant {grant_id} is {grant.status}; only a {' or '.join(allowed)} grant can be "
                           f"{ {'approve': 'approved', 'reject': 'rejected', 'revoke': 'revoked'}[action]}", param="grant_id", code="grant_state")
        if action == "approve":
            _activate(grant, listing)
        elif action == "reject":
            grant.status, grant.decided_at = "rejected", now()
        else:
            grant.status, grant.revoked_at = "revoked", now()
        out = grant_shape(s, grant)
    audit(db(request), caller, f"POST /v1/market/grants/{action}", grant_id)
    return out


@router.post("/grants/{grant_id}/approve")
def approve(grant_id: str, request: Request, caller: Caller = Depends(requires("write"))):
    return _decide(request, caller, grant_id, "approve")


@router.post("/grants/{grant_id}/reject")
def reject(grant_id: str, request: Request, caller: Caller = Depends(requires("write"))):
    return _decide(request, caller, grant_id, "reject")


@router.post("/grants/{grant_id}/revoke")
def revoke(grant_id: str, request: Request, caller: Caller = Depends(requires("write"))):
    """Stop a grant: no new exports under it; bundles exported already keep their terms (and their usage is priced)."""
    return _decide(request, caller, grant_id, "revoke")
