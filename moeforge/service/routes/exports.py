"""`/v1/exports`: library entries exported right-sized and bundled for an air-gapped site, downloadable.

The worker exports every succeeded job once by itself (coverage 0.9); POST asks for another
coverage, adds `models` (the tenant's own entries, the shared library's, or listed entries it
holds an active grant for), or exports `models` alone, profiled on one of the tenant's files. The
bundle carries each entry's licence text and the grants it was exported under; a revoked grant
stops new exports. The download is the bundle as one tar (`moeforge bundle verify` or
`sha256sum -c` checks it).
"""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from moeforge.service.auth import Caller, requires
from moeforge.service.db import dumps, loads, new_id, now, stamp
from moeforge.service.errors import APIError, not_found
from moeforge.service.routes.common import audit, check_limit, db, page

router = APIRouter(prefix="/v1/exports", tags=["exports"])


MAX_MODELS = 8


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job: str | None = Field(None, max_length=64)  # a succeeded job: its model, profiled on its data
    models: list[str] = Field(default_factory=list, max_length=MAX_MODELS)  # more entries (or, without a job, the entries)
    file: str | None = Field(None, max_length=64)  # without a job: the data the export is profiled on
    coverage: float = Field(0.9, gt=0, le=1)


def shape(row) -> dict:
    return {"id": row.id, "object": "export", "job": row.job_id, "model": row.entry_id,
            "models": loads(row.models) or [row.entry_id], "status": row.status,
            "coverage": float(row.coverage), "summary": loads(row.summary), "error": row.error, "bytes": row.bytes,
            "sha256": row.sha256, "created_at": stamp(row.created_at), "finished_at": stamp(row.finished_at),
            "download": f"/v1/exports/{row.id}/content" if row.status == "succeeded" else None}


def owned_export(session, tenant_id: str, export_id: str):
    from moeforge.service.schema import ExportRow

    row = session.get(ExportRow, export_id) if len(export_id) <= 40 else None
    if row is None or row.tenant_id != tenant_id:
        raise not_found("export", export_id, "export_id")
    return row


def tar_path(settings, export_id: str):
    return settings.exports() / f"{export_id}.tar"


def queue_export(session, tenant_id: str, job_id: str | None, entries: list[str], coverage: float, file_id: str | None = None):
    from moeforge.service.schema import ExportRow

    row = ExportRow(id=new_id("export"), tenant_id=tenant_id, job_id=job_id, entry_id=entries[0], models=dumps(entries),
                    file_id=file_id, status="queued", coverage=f"{coverage:g}", created_at=now())
    session.add(row)
    return row


@router.post("")
def create(body: ExportCreate, request: Request, caller: Caller = Depends(requires("write"))):
    from moeforge.service.routes.files import owned_file
    from moeforge.service.routes.jobs import owned_job

    with db(request).session() as s:
        entries, file_id = [], None
        if body.job is not None:
            job = owned_job(s, caller.tenant_id, body.job)
            if job.status != "succeeded" or job.fine_tuned_model is None:
                raise APIError(400, f"job {body.job} has status {job.status}; only a succeeded job that made a model can be "
                               "exported", param="job", code="job_not_exportable")
            entries.append(job.fine_tuned_model)
        elif not body.models or body.file is None:
            raise APIError(400, "give `job` (a succeeded job), or `models` and `file` (the data to profile the export on)",
                           param="job", code="nothing_to_export")
        else:
            f = owned_file(s, caller.tenant_id, body.file, "file")
            if f.purpose != "fine-tune" or f.status != "processed":
                raise APIError(400, f"file {body.file} is a {f.purpose} file, {f.status}; the export profiles a processed "
                               "fine-tune file", param="file", code="invalid_file")
            file_id = f.id
        for i, model in enumerate(body.models):
            if model in entries:
                raise APIError(400, f"models[{i}] {model}: named twice", param=f"models.{i}")
            export_right(s, request.app.state.library, caller.tenant_id, model, f"models.{i}")
            entries.append(model)
        row = queue_export(s, caller.tenant_id, body.job, entries, body.coverage, file_id)
    audit(db(request), caller, "POST /v1/exports", row.id)
    return shape(row)


def export_right(session, library, tenant_id: str, entry: str, param: str):
    """The grant (or None: the tenant's own entry, or the shared library's) under which the tenant may export `entry`;
    APIError otherwise (404 for an entry it may not see, 403 for a listed one it holds no active grant for)."""
    from sqlalchemy import select

    from moeforge.errors import ArtifactNotFound
    from moeforge.service.market.schema import ListingRow
    from moeforge.service.market.usage import usable_grant
    from moeforge.service.schema import EntryOwnerRow

    owners = set(session.scalars(select(EntryOwnerRow.tenant_id).where(EntryOwnerRow.entry_id == entry)))
    listing = session.scalar(select(ListingRow).where(ListingRow.entry_id == entry))
    if tenant_id in owners or (listing is not None and listing.owner_tenant == tenant_id):
        return None
    try:
        summary = library.catalog.get(entry) if len(entry) == 64 else None
    except ArtifactNotFound:
        summary = None
    visible = summary is not None and not summary.retired and (
        (listing is None and not owners) or (listing is not None and listing.visibility != "private"))
    if not visible:
        raise not_found("model", entry, param)
    if listing is None:
        return None  # the shared library
    grant = usable_grant(session, tenant_id, entry)
    if grant is None:
        raise APIError(403, f"{param}: model {entry[:12]}… is listed ({listing.id}, {listing.visibility}); export it once you "
                       f"hold an active grant: POST /v1/market/listings/{listing.id}/access", param=param, code="no_grant")
    return grant


@router.get("")
def list_exports(request: Request, limit: int = 100, job: str | None = None, caller: Caller = Depends(requires("read"))):
    from sqlalchemy import select

    from moeforge.service.schema import ExportRow

    check_limit(limit)
    with db(request).session() as s:
        q = select(ExportRow).where(ExportRow.tenant_id == caller.tenant_id)
        if job is not None:
            q = q.where(ExportRow.job_id == job)
        rows = list(s.scalars(q.order_by(ExportRow.created_at.desc(), ExportRow.id.desc()).limit(limit + 1)))
    return page(rows, limit, shape)


@router.get("/{export_id}")
def retrieve(export_id: str, request: Request, caller: Caller = Depends(requires("read"))):
    with db(request).session() as s:
        return shape(owned_export(s, caller.tenant_id, export_id))


@router.get("/{export_id}/content")
def content(export_id: str, request: Request, caller: Caller = Depends(requires("read"))):
    with db(request).session() as s:
        row = owned_export(s, caller.tenant_id, export_id)
    if row.status != "succeeded":
        raise APIError(409, f"export {export_id} is {row.status}; download it once it has succeeded", param="export_id",
                       code="export_not_ready")
    path = tar_path(request.app.state.settings, export_id)
    if not path.is_file():
        raise not_found("export bundle", export_id, "export_id")
    audit(db(request), caller, "GET /v1/exports/content", export_id)
    return FileResponse(path, media_type="application/x-tar", filename=f"{export_id}.tar")
