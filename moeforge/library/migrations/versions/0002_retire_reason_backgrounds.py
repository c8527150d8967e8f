"""Why an entry was retired, and the cached background routing profile of each base.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("entries") as batch:
        batch.add_column(sa.Column("retired_reason", sa.Text, nullable=True))
    op.create_table(
        "backgrounds",
        sa.Column("base_fingerprint", sa.String(64), primary_key=True),
        sa.Column("profile", sa.String(64), nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("backgrounds")
    with op.batch_alter_table("entries") as batch:
        batch.drop_column("retired_reason")
