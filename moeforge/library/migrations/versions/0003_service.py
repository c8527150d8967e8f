"""The Customization Centre: tenants, API keys, files, jobs with their events and checkpoints, exports, entry owners,
and the audit log (moeforge/service/schema.py).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID, _DIGEST = 40, 64


def _when(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table("tenants", sa.Column("id", sa.String(_ID), primary_key=True),
                    sa.Column("name", sa.String(100), nullable=False, unique=True), _when("created_at"))
    op.create_table("api_keys", sa.Column("id", sa.String(_ID), primary_key=True),
                    sa.Column("tenant_id", sa.String(_ID), sa.ForeignKey("tenants.id"), nullable=False, index=True),
                    sa.Column("name", sa.String(100), nullable=False), sa.Column("secret_sha256", sa.String(_DIGEST), nullable=False),
                    sa.Column("scopes", sa.String(100), nullable=False), _when("created_at"), _when("revoked_at", True))
    op.create_table("files", sa.Column("id", sa.String(_ID), primary_key=True),
                    sa.Column("tenant_id", sa.String(_ID), sa.ForeignKey("tenants.id"), nullable=False, index=True),
                    sa.Column("filename", sa.String(255), nullable=False), sa.Column("purpose", sa.String(32), nullable=False),
                    sa.Column("bytes", sa.Integer, nullable=False), sa.Column("sha256", sa.String(_DIGEST), nullable=False),
                    sa.Column("status", sa.String(16), nullable=False), sa.Column("status_details", sa.Text, nullable=True),
                    sa.Column("report", sa.Text, nullable=True), sa.Column("deleted", sa.Boolean, nullable=False),
                    _when("created_at"))
    op.create_table("jobs", sa.Column("id", sa.String(_ID), primary_key=True),
                    sa.Column("tenant_id", sa.String(_ID), sa.ForeignKey("tenants.id"), nullable=False, index=True),
                    sa.Column("idempotency_key", sa.String(200), nullable=True),
                    sa.Column("body_sha256", sa.String(_DIGEST), nullable=False), sa.Column("model", sa.String(100), nullable=False),
                    sa.Column("files", sa.Text, nullable=False), sa.Column("validation_file", sa.String(_ID), nullable=True),
                    sa.Column("problem", sa.Text, nullable=False), sa.Column("settings", sa.Text, nullable=False),
                    sa.Column("status", sa.String(24), nullable=False, index=True), sa.Column("error", sa.Text, nullable=True),
                    sa.Column("plan", sa.Text, nullable=True), sa.Column("salt", sa.String(64), nullable=False),
                    sa.Column("fine_tuned_model", sa.String(_DIGEST), nullable=True),
                    sa.Column("trained_tokens", sa.Integer, nullable=True),
                    sa.Column("cancel_requested", sa.Boolean, nullable=False), sa.Column("attempts", sa.Integer, nullable=False),
                    _when("created_at"), _when("finished_at", True),
                    sa.UniqueConstraint("tenant_id", "idempotency_key"))
    op.create_table("job_events", sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("job_id", sa.String(_ID), sa.ForeignKey("jobs.id"), nullable=False, index=True),
                    _when("created_at"), sa.Column("level", sa.String(8), nullable=False),
                    sa.Column("type", sa.String(16), nullable=False), sa.Column("message", sa.Text, nullable=False),
                    sa.Column("data", sa.Text, nullable=True))
    op.create_table("job_checkpoints", sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("job_id", sa.String(_ID), sa.ForeignKey("jobs.id"), nullable=False, index=True),
                    sa.Column("round", sa.Integer, nullable=False), sa.Column("state", sa.String(_DIGEST), nullable=False),
                    sa.Column("metrics", sa.Text, nullable=False), _when("created_at"), sa.UniqueConstraint("job_id", "round"))
    op.create_table("exports", sa.Column("id", sa.String(_ID), primary_key=True),
                    sa.Column("tenant_id", sa.String(_ID), sa.ForeignKey("tenants.id"), nullable=False, index=True),
                    sa.Column("job_id", sa.String(_ID), sa.ForeignKey("jobs.id"), nullable=False, index=True),
                    sa.Column("entry_id", sa.String(_DIGEST), nullable=False), sa.Column("status", sa.String(16), nullable=False),
                    sa.Column("coverage", sa.String(16), nullable=False), sa.Column("summary", sa.Text, nullable=True),
                    sa.Column("error", sa.Text, nullable=True), sa.Column("bytes", sa.Integer, nullable=True),
                    sa.Column("sha256", sa.String(_DIGEST), nullable=True), _when("created_at"), _when("finished_at", True))
    op.create_table("entry_owners", sa.Column("entry_id", sa.String(_DIGEST), primary_key=True),
                    sa.Column("tenant_id", sa.String(_ID), sa.ForeignKey("tenants.id"), primary_key=True),
                    sa.Column("job_id", sa.String(_ID), nullable=False), _when("created_at"))
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("tenant_id", sa.String(_ID), nullable=True, index=True), sa.Column("key_id", sa.String(_ID), nullable=True),
                    sa.Column("action", sa.String(200), nullable=False), sa.Column("resource", sa.String(200), nullable=True),
                    sa.Column("status", sa.Integer, nullable=False), _when("created_at"))


def downgrade() -> None:
    for table in ("audit", "entry_owners", "exports", "job_checkpoints", "job_events", "jobs", "files", "api_keys", "tenants"):
        op.drop_table(table)
