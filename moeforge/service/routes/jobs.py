"""`/v1/fine_tuning/jobs`: a problem statement and data files in, a job on the subnet out (OpenAI's job shapes)."""

import hashlib
from typing import Literal

from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field

from moeforge.service.auth import Caller, requires
from moeforge.service.db import add_event, dumps, loads, new_id, now, stamp
from moeforge.service.errors import APIError, not_found
from moeforge.service.routes.common import audit, check_limit, db, newest_first, page, read

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["jobs"])

STATES = ("validating_files", "profiling", "queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
MAX_EVENTS_PAGE = 1000
METRICS = ("held_out_loss",)  # what the network optimises and reports; task scores join it where a domain has one


class Problem(BaseModel):
    """What the customer wants: the domain, what good looks like, and the metric that says so."""

    model_config = ConfigDict(extra="forbid")
    domain: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    goal: str = Field("", max_length=2000)
    metric: Literal[METRICS] = "held_out_loss"


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: int | Literal["auto"] = "auto"  # rounds of the network job
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=100)
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    files: list[str] = Field(default_factory=list, max_length=16)  # more training files
    problem: Problem | None = None
    hyperparameters: Hyperparameters | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    metadata: dict[str, str] | None = Field(None, max_length=16)


def shape(row) -> dict:
    settings = loads(row.settings, {})
    files = loads(row.files, [])
    return {
        "id": row.id, "object": "fine_tuning.job", "created_at": stamp(row.created_at), "finished_at": stamp(row.finished_at),
        "model": row.model, "fine_tuned_model": row.fine_tuned_model, "organization_id": row.tenant_id, "status": row.status,
        "training_file": files[0], "files": files, "validation_file": row.validation_file,
        "hyperparameters": {"n_epochs": settings["rounds"], "batch_size": settings.get("batch_size", "auto"),
                            "learning_rate_multiplier": settings.get("learning_rate_multiplier", "auto")},
        "method": {"type": "supervised"}, "integrations": [], "result_files": settings.get("result_files", []),
        "trained_tokens": row.trained_tokens, "error": loads(row.error), "seed": settings.get("seed"),
        "suffix": settings.get("suffix"), "metadata": settings.get("metadata"), "problem": loads(row.problem),
        "plan": loads(row.plan), "cancel_requested": row.cancel_requested, "estimated_finish": None,
    }


def owned_job(session, tenant_id: str, job_id: str):
    from moeforge.service.schema import JobRow

    row = session.get(JobRow, job_id) if len(job_id) <= 40 else None
    if row is None or row.tenant_id != tenant_id:
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    return row


@router.post("")
def create(body: JobCreate, request: Request, caller: Caller = Depends(requires("write")),
           idempotency_key: str | None = Header(None, max_length=200)):
    """Create a job; the worker validates its files, profiles and plans it, then runs it."""
    from sqlalchemy import select

    from moeforge.service.routes.files import owned_file
    from moeforge.service.schema import JobRow

    settings = request.app.state.settings
    digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    with db(request).session() as s:
        if idempotency_key is not None:
            earlier = s.scalar(select(JobRow).where(JobRow.tenant_id == caller.tenant_id,
                                                    JobRow.idempotency_key == idempotency_key))
            if earlier is not None:
                if earlier.body_sha256 != digest:
                    raise APIError(409, f"Idempotency-Key {idempotency_key!r} was used for another request (job "
                                   f"{earlier.id}); use a new key for a new job", param="Idempotency-Key",
                                   code="idempotency_key_reused")
                return shape(earlier)
        if body.model not in settings.bases:
            raise APIError(400, f"model {body.model!r}: no such base model here; the bases are "
                           f"{', '.join(settings.bases)}", param="model", code="model_not_found")
        ids = [body.training_file, *body.files] + ([body.validation_file] if body.validation_file else [])
        if len(set(ids)) != len(ids):
            raise APIError(400, "a file is named twice among training_file, files and validation_file", param="files")
        for param, file_id in [("training_file", body.training_file), *(("files", f) for f in body.files),
                               *([("validation_file", body.validation_file)] if body.validation_file else [])]:
            row = owned_file(s, caller.tenant_id, file_id, param)
            if row.purpose != "fine-tune":
                raise APIError(400, f"{param} {file_id!r} has purpose {row.purpose!r}; a job trains on fine-tune files",
                               param=param, code="wrong_purpose")
            if row.status == "error":
                raise APIError(400, f"{param} {file_id!r} failed validation: {row.status_details}", param=param,
                               code="invalid_file")
        hyper = body.hyperparameters or Hyperparameters()
        rounds = hyper.n_epochs if hyper.n_epochs != "auto" else settings.job_defaults.get(body.model, {}).get("rounds", 3)
        if not 1 <= rounds <= settings.max_rounds:
            raise APIError(400, f"hyperparameters.n_epochs {rounds}: expected 1 to {settings.max_rounds} rounds",
                           param="hyperparameters.n_epochs")
        if hyper.learning_rate_multiplier != "auto" and not 0 < hyper.learning_rate_multiplier <= 10:
            raise APIError(400, "hyperparameters.learning_rate_multiplier: expected a number in (0, 10]",
                           param="hyperparameters.learning_rate_multiplier")
        if hyper.batch_size != "auto" and not 1 <= hyper.batch_size <= 256:
            raise APIError(400, "hyperparameters.batch_size: expected 1 to 256", param="hyperparameters.batch_size")
        problem = body.problem or Problem(domain=_domain_of(body.suffix))
        job_settings = {"rounds": rounds, "batch_size": hyper.batch_size, "learning_rate_multiplier": hyper.learning_rate_multiplier,
                        "seed": body.seed, "suffix": body.suffix, "metadata": body.metadata}
        import secrets

        row = JobRow(id=new_id("ftjob"), tenant_id=caller.tenant_id, idempotency_key=idempotency_key, body_sha256=digest,
                     model=body.model, files=dumps([body.training_file, *body.files]), validation_file=body.validation_file,
                     problem=problem.model_dump_json(), settings=dumps(job_settings), status="validating_files",
                     salt=secrets.token_hex(16), cancel_requested=False, attempts=0, created_at=now())
        s.add(row)
        add_event(s, row.id, f"job created on {body.model} with {len(ids)} file(s)")
    audit(db(request), caller, "POST /v1/fine_tuning/jobs", row.id)
    return shape(row)


def _domain_of(suffix: str | None) -> str:
    import re

    name = re.sub(r"[^a-z0-9_-]", "-", (suffix or "custom").lower()).strip("-_") or "custom"
    return name[:64]


@router.get("")
async def list_jobs(request: Request, limit: int = 20, after: str | None = None):
    from sqlalchemy import select

    from moeforge.service.schema import JobRow

    def work(s, caller):
        check_limit(limit)
        q = select(JobRow).where(JobRow.tenant_id == caller.tenant_id)
        cursor = owned_job(s, caller.tenant_id, after) if after is not None else None
        return page(newest_first(s, q, JobRow, cursor, limit), limit, shape)

    return await read(request, work)


@router.get("/{job_id}")
async def retrieve(job_id: str, request: Request):
    return await read(request, lambda s, caller: shape(owned_job(s, caller.tenant_id, job_id)))


@router.post("/{job_id}/cancel")
def cancel(job_id: str, request: Request, caller: Caller = Depends(requires("write"))):
    """Ask the worker to stop the job; a job no worker has taken up yet is cancelled at once."""
    from sqlalchemy import update

    from moeforge.service.schema import JobRow

    with db(request).session() as s:
        row = owned_job(s, caller.tenant_id, job_id)
        if row.status in FINAL:
            raise APIError(400, f"job {job_id} has {row.status}; only a job that has not ended can be cancelled",
                           param="fine_tuning_job_id", code="job_not_cancellable")
        row.cancel_requested = True
        add_event(s, row.id, "cancel requested")
    with db(request).session() as s:  # a queued job no worker holds: cancelled now (the worker claims jobs the same way)
        done = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "queued")
                         .values(status="cancelled", finished_at=now())).rowcount
        if done:
            add_event(s, job_id, "job cancelled")
    audit(db(request), caller, "POST /v1/fine_tuning/jobs/cancel", job_id)
    with db(request).session() as s:
        return shape(owned_job(s, caller.tenant_id, job_id))


def _event_shape(row) -> dict:
    return {"id": f"ftevent-{row.id}", "object": "fine_tuning.job.event", "created_at": stamp(row.created_at),
            "level": row.level, "type": row.type, "message": row.message, "data": loads(row.data)}


@router.get("/{job_id}/events")
async def events(job_id: str, request: Request, limit: int = 20, after: str | None = None):
    """The job's events, newest first; `after` an event id: the ones before it."""
    from sqlalchemy import select

    from moeforge.service.schema import EventRow

    def work(s, caller):
        if not 1 <= limit <= MAX_EVENTS_PAGE:
            raise APIError(400, f"limit {limit}: expected 1 to {MAX_EVENTS_PAGE}", param="limit")
        if after is not None and (not after.startswith("ftevent-") or not after[8:].isdigit()):
            raise APIError(400, f"after {after!r}: expected an event id (ftevent-N)", param="after")
        owned_job(s, caller.tenant_id, job_id)
        q = select(EventRow).where(EventRow.job_id == job_id)
        if after is not None:
            q = q.where(EventRow.id < int(after[8:]))
        return page(list(s.scalars(q.order_by(EventRow.id.desc()).limit(limit + 1))), limit, _event_shape)

    return await read(request, work)


@router.get("/{job_id}/checkpoints")
def checkpoints(job_id: str, request: Request, limit: int = 100, caller: Caller = Depends(requires("read"))):
    """Each adopted round's expert state, newest first."""
    from sqlalchemy import select

    from moeforge.service.schema import CheckpointRow

    check_limit(limit)
    with db(request).session() as s:
        owned_job(s, caller.tenant_id, job_id)
        rows = list(s.scalars(select(CheckpointRow).where(CheckpointRow.job_id == job_id)
                              .order_by(CheckpointRow.round.desc()).limit(limit + 1)))
    return page(rows, limit, lambda r: {
        "id": f"ftckpt-{r.id}", "object": "fine_tuning.job.checkpoint", "created_at": stamp(r.created_at),
        "fine_tuning_job_id": job_id, "fine_tuned_model_checkpoint": r.state, "step_number": r.round,
        "metrics": loads(r.metrics, {})})


@router.get("/{job_id}/heatmap.png")
def heatmap(job_id: str, request: Request, caller: Caller = Depends(requires("read"))):
    """The routing heatmap of the job's train split, from which its experts were selected (once it is planned)."""
    from fastapi.responses import FileResponse

    from moeforge.service.plan import PLAN_FILES

    with db(request).session() as s:
        owned_job(s, caller.tenant_id, job_id)
    path = request.app.state.settings.runs() / job_id / PLAN_FILES["heatmap"]
    if not path.is_file():
        raise not_found("heatmap of job", job_id, "fine_tuning_job_id")
    return FileResponse(path, media_type="image/png")
