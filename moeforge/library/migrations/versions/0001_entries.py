"""The first catalog: entries with their slots, parents and contributors.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "entries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("base_fingerprint", sa.String(64), nullable=False, index=True),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("model_type", sa.String(64), nullable=False),
        sa.Column("domain", sa.String(200), nullable=False, index=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("license", sa.String(80), nullable=False),
        sa.Column("experts", sa.String(64), nullable=False),
        sa.Column("profile", sa.String(64), nullable=True),
        sa.Column("job_id", sa.String(200), nullable=True),
        sa.Column("n_slots", sa.Integer, nullable=False),
        sa.Column("domain_loss_before", sa.Float, nullable=True),
        sa.Column("domain_loss_after", sa.Float, nullable=True),
        sa.Column("general_ppl_before", sa.Float, nullable=True),
        sa.Column("general_ppl_after", sa.Float, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "entry_slots",
        sa.Column("entry_id", sa.String(64), sa.ForeignKey("entries.id"), primary_key=True),
        sa.Column("layer", sa.Integer, primary_key=True),
        sa.Column("expert", sa.Integer, primary_key=True),
    )
    op.create_table(
        "entry_parents",
        sa.Column("entry_id", sa.String(64), sa.ForeignKey("entries.id"), primary_key=True),
        sa.Column("parent_id", sa.String(64), primary_key=True, index=True),
        sa.Column("relation", sa.String(16), nullable=False),
        sa.Column("slots", sa.Integer, nullable=False),
    )
    op.create_table(
        "entry_contributors",
        sa.Column("entry_id", sa.String(64), sa.ForeignKey("entries.id"), primary_key=True),
        sa.Column("contributor", sa.String(128), primary_key=True, index=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("share", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("entry_contributors", "entry_parents", "entry_slots", "entries"):
        op.drop_table(table)
