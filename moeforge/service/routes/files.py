"""`/v1/files`: customers' data files, streamed into the store, checked at once and validated in full by the worker."""

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from moeforge.service.auth import Caller, requires
from moeforge.service.db import loads, new_id, now, stamp
from moeforge.service.errors import APIError, not_found
from moeforge.service.routes.common import audit, check_limit, db, newest_first, page, read

router = APIRouter(prefix="/v1/files", tags=["files"])
PURPOSES = ("fine-tune", "usage")  # usage: a `moeforge serve` ledger file, verified when it is reported


def shape(row) -> dict:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": stamp(row.created_at), "filename": row.filename,
            "purpose": row.purpose, "status": row.status, "status_details": row.status_details,
            "report": loads(row.report), "sha256": row.sha256}


def owned_file(session, tenant_id: str, file_id: str, param: str = "file_id"):
    from moeforge.service.schema import FileRow

    row = session.get(FileRow, file_id) if isinstance(file_id, str) and len(file_id) <= 40 else None
    if row is None or row.tenant_id != tenant_id or row.deleted:
        raise not_found("file", str(file_id), param)
    return row


@router.post("")
async def upload(request: Request, caller: Caller = Depends(requires("write"))):
    """Stream a file into the store (multipart: `file`, `purpose=fine-tune` or `usage`)."""
    from moeforge.service.schema import FileRow
    from moeforge.service.uploads import receive_upload
    from moeforge.service.validation import sniff

    settings = request.app.state.settings
    try:
        received = await receive_upload(request, settings.uploads(), settings.max_upload_bytes)
    except ClientDisconnect:
        raise APIError(400, "the client went away before the upload finished; nothing was stored", param="file") from None
    try:
        purpose = received.fields.get("purpose", "fine-tune")
        if purpose not in PURPOSES:
            raise APIError(400, f"purpose {purpose!r}: expected one of {', '.join(PURPOSES)}", param="purpose")
        await run_in_threadpool(sniff, received.path, received.filename)
        digest = await run_in_threadpool(request.app.state.store.put_file, received.path)
        if digest != received.sha256:
            raise APIError(500, "the stored upload does not hash to what was received")
    finally:
        received.path.unlink(missing_ok=True)

    def insert():
        row = FileRow(id=new_id("file"), tenant_id=caller.tenant_id, filename=received.filename, purpose=purpose,
                      bytes=received.bytes, sha256=digest, deleted=False,
                      status="processed" if purpose == "usage" else "uploaded", created_at=now())
        with db(request).session() as s:
            s.add(row)
        audit(db(request), caller, "POST /v1/files", row.id)
        return shape(row)

    return await run_in_threadpool(insert)


@router.get("")
async def list_files(request: Request, limit: int = 100, after: str | None = None, purpose: str | None = None):
    from sqlalchemy import select

    from moeforge.service.schema import FileRow

    def work(s, caller):
        check_limit(limit)
        q = select(FileRow).where(FileRow.tenant_id == caller.tenant_id, FileRow.deleted.is_(False))
        if purpose is not None:
            q = q.where(FileRow.purpose == purpose)
        cursor = owned_file(s, caller.tenant_id, after, "after") if after is not None else None
        return page(newest_first(s, q, FileRow, cursor, limit), limit, shape)

    return await read(request, work)


@router.get("/{file_id}")
async def retrieve(file_id: str, request: Request):
    return await read(request, lambda s, caller: shape(owned_file(s, caller.tenant_id, file_id)))


@router.delete("/{file_id}")
def delete(file_id: str, request: Request, caller: Caller = Depends(requires("write"))):
    """Hide the file from its tenant; jobs that used it keep their own copy of what they read."""
    with db(request).session() as s:
        owned_file(s, caller.tenant_id, file_id).deleted = True
    audit(db(request), caller, "DELETE /v1/files", file_id)
    return {"id": file_id, "object": "file", "deleted": True}
