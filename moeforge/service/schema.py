"""The Centre's tables, in the same database (and the same Alembic history) as the library catalog.

migrations/versions/0003_service.py creates them. JSON columns hold documents the service writes
whole (a validation report, a plan, a problem statement) and never queries inside.
"""

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from moeforge.library.schema import DIGEST, Base

ID = 40  # "ftjob-" + 24 hex and the like


class TenantRow(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class KeyRow(Base):
    """An API key: only the sha256 of its secret is kept; revoked keys stay, for the audit log."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_sha256: Mapped[str] = mapped_column(String(DIGEST))
    scopes: Mapped[str] = mapped_column(String(100))  # comma-separated: read, write, admin
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class FileRow(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(DIGEST))  # the blob in the service's store
    status: Mapped[str] = mapped_column(String(16))  # uploaded | processed | error
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    report: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: service/validation.py FileReport
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)
    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    body_sha256: Mapped[str] = mapped_column(String(DIGEST))  # of the creating request, for idempotent replays
    model: Mapped[str] = mapped_column(String(100))  # a base model name of the service's settings
    files: Mapped[str] = mapped_column(Text)  # JSON list of file ids, the training file first
    validation_file: Mapped[str | None] = mapped_column(String(ID), nullable=True)
    problem: Mapped[str] = mapped_column(Text)  # JSON: service/models.py Problem
    settings: Mapped[str] = mapped_column(Text)  # JSON: the job's settings (rounds, seed, suffix, metadata)
    status: Mapped[str] = mapped_column(String(24), index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON {code, message, param}
    plan: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: service/plan.py JobPlan
    salt: Mapped[str] = mapped_column(String(64))  # the data salt of its network: secret, never returned
    fine_tuned_model: Mapped[str | None] = mapped_column(String(DIGEST), nullable=True)  # the library entry it made
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker took it up
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EventRow(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    level: Mapped[str] = mapped_column(String(8))  # info | warn | error
    type: Mapped[str] = mapped_column(String(16))  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON


class CheckpointRow(Base):
    __tablename__ = "job_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "round"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(DIGEST))  # the adopted expert state's digest in the job's store
    metrics: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExportRow(Base):
    __tablename__ = "exports"
    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True, nullable=True)  # None: of listed models
    entry_id: Mapped[str] = mapped_column(String(DIGEST))  # the first of `models`
    models: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list of every entry exported (revision 0004)
    file_id: Mapped[str | None] = mapped_column(String(ID), nullable=True)  # the data profiled, when there is no job
    status: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed
    coverage: Mapped[str] = mapped_column(String(16))  # the routing coverage asked for, as text
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: experts kept, gaps
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(DIGEST), nullable=True)  # of the bundle's tar
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EntryOwnerRow(Base):
    """Which tenant's job made a library entry: what `models` shows that tenant."""

    __tablename__ = "entry_owners"
    entry_id: Mapped[str] = mapped_column(String(DIGEST), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(ID))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str | None] = mapped_column(String(ID), index=True, nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(ID), nullable=True)
    action: Mapped[str] = mapped_column(String(200))  # "POST /v1/files"
    resource: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
