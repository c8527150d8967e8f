"""`/v1/exports`: a finished job's experts exported right-sized and bundled for an air-gapped site, downloadable.

The worker exports every succeeded job once by itself (coverage 0.9); POST asks for another
coverage. The download is the bundle as one tar (`moeforge bundle verify` or `sha256sum -c` checks it).
"""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from moeforge.service.auth import Caller, requires
from moeforge.service.db import loads, new_id, now, stamp
from moeforge.service.errors import APIError, not_found
from moeforge.service.routes.common import audit, check_limit, db, page

router = APIRouter(prefix="/v1/exports", tags=["exports"])


class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job: str = Field(max_length=64)
    coverage: float = Field(0.9, gt=0, le=1)


def shape(row) -> dict:
    return {"id": row.id, "object": "export", "job": row.job_id, "model": row.entry_id, "status": row.status,
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


def queue_export(session, tenant_id: str, job_id: str, entry_id: str, coverage: float):
    from moeforge.service.schema import ExportRow

    row = ExportRow(id=new_id("export"), tenant_id=tenant_id, job_id=job_id, entry_id=entry_id, status="queued",
                    coverage=f"{coverage:g}", created_at=now())
    session.add(row)
    return row


@router.post("")
def create(body: ExportCreate, request: Request, caller: Caller = Depends(requires("write"))):
    from moeforge.service.routes.jobs import owned_job

    with db(request).session() as s:
        job = owned_job(s, caller.tenant_id, body.job)
        if job.status != "succeeded" or job.fine_tuned_model is None:
            raise APIError(400, f"job {body.job} has status {job.status}; only a succeeded job that made a model can be "
                           "exported", param="job", code="job_not_exportable")
        row = queue_export(s, caller.tenant_id, job.id, job.fine_tuned_model, body.coverage)
    audit(db(request), caller, "POST /v1/exports", row.id)
    return shape(row)


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
