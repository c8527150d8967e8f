"""`/v1/models`: the library entries a tenant may use: those its jobs made, and the shared library's.

An entry some tenant's job made is that tenant's alone; an entry no tenant owns (deposited by
`moeforge library add` or by the subnet's own jobs) is shared with every tenant.
"""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from moeforge.errors import ArtifactNotFound
from moeforge.service.auth import Caller, requires
from moeforge.service.errors import not_found
from moeforge.service.routes.common import db

router = APIRouter(prefix="/v1/models", tags=["models"])


def visible(session, tenant_id: str) -> tuple[set[str], set[str]]:
    """(entries this tenant owns, entries some tenant owns)."""
    from sqlalchemy import select

    from moeforge.service.schema import EntryOwnerRow

    rows = list(session.execute(select(EntryOwnerRow.entry_id, EntryOwnerRow.tenant_id)))
    return {e for e, t in rows if t == tenant_id}, {e for e, _ in rows}


def _shape(summary, owned: set[str]) -> dict:
    return {"id": summary.id, "object": "model", "created": int(summary.created_at.timestamp()),
            "owned_by": "you" if summary.id in owned else "library", "domain": summary.domain, "base_model": summary.base_model,
            "license": summary.license, "experts": summary.n_slots,
            "metrics": {"domain_loss_before": summary.domain_loss_before, "domain_loss_after": summary.domain_loss_after,
                        "general_ppl_before": summary.general_ppl_before, "general_ppl_after": summary.general_ppl_after}}


def usable_entry(request: Request, caller: Caller, model_id: str):
    """The catalog summary of an entry the caller may use (404 for any other, whether it exists or not)."""
    library = request.app.state.library
    with db(request).session() as s:
        owned, anyone = visible(s, caller.tenant_id)
    if len(model_id) != 64 or (model_id in anyone and model_id not in owned):
        raise not_found("model", model_id, "model")
    try:
        summary = library.catalog.get(model_id)
    except ArtifactNotFound:
        raise not_found("model", model_id, "model") from None
    if summary.retired:
        raise not_found("model", model_id, "model")
    return summary, owned


@router.get("")
def list_models(request: Request, caller: Caller = Depends(requires("read"))):
    library = request.app.state.library
    with db(request).session() as s:
        owned, anyone = visible(s, caller.tenant_id)
    entries = [e for e in library.catalog.entries() if e.id in owned or e.id not in anyone]
    return {"object": "list", "data": [_shape(e, owned) for e in entries], "has_more": False}


@router.get("/{model_id}")
def retrieve(model_id: str, request: Request, caller: Caller = Depends(requires("read"))):
    from moeforge.library.card import model_card

    summary, owned = usable_entry(request, caller, model_id)
    manifest = request.app.state.library.manifest(model_id)
    return {**_shape(summary, owned), "card": model_card(model_id, manifest, created_at=summary.created_at),
            "lineage": [{"entry": p.entry, "relation": p.relation, "experts": p.slots} for p in manifest.parents],
            "slots": [list(s) for s in manifest.slots]}


@router.get("/{model_id}/heatmap.png")
async def heatmap(model_id: str, request: Request, caller: Caller = Depends(requires("read"))):
    """The routing profile the entry's experts were selected from, as a heatmap."""
    summary, _ = await run_in_threadpool(usable_entry, request, caller, model_id)
    png = await run_in_threadpool(_heatmap_png, request.app.state.library, model_id, summary.domain)
    if png is None:
        raise not_found("routing profile of model", model_id, "model")
    return Response(png, media_type="image/png")


def _heatmap_png(library, entry_id: str, domain: str) -> bytes | None:
    import tempfile
    from pathlib import Path

    from moeforge.profile.heatmap import plot_profile

    profile = library.profile(library.manifest(entry_id), entry_id)
    if profile is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_profile(profile, Path(tmp) / "heatmap.png", title=f"routing of {domain} data, entry {entry_id[:12]}…")
        return path.read_bytes()
