"""The marketplace: listings, grants, server keys, usage reports and lines, and the append-only earnings ledger
(moeforge/service/market/schema.py); exports may name listed models instead of a job.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID, _DIGEST = 40, 64
_APPEND_ONLY = "the earnings ledger is append-only: post a reversing line instead"


def _when(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str, size: int | None = None, nullable: bool = False, index: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(size) if size else sa.Text, nullable=nullable, index=index)


def upgrade() -> None:
    op.create_table("listings", _text("id", _ID), _text("entry_id", _DIGEST),
                    sa.Column("owner_tenant", sa.String(_ID), sa.ForeignKey("tenants.id"), nullable=False, index=True),
                    _text("title", 200), _text("description"), _text("tags"), _text("licence"), _text("licence_id", 80, index=True),
                    _text("price_kind", 16, index=True), sa.Column("price_micros", sa.BigInteger, nullable=False),
                    _text("visibility", 16, index=True), _text("domain", 200, index=True), _text("base_model", 200, index=True),
                    _text("base_fingerprint", _DIGEST), sa.Column("domain_gain", sa.Float, nullable=True),
                    sa.Column("general_ppl_change", sa.Float, nullable=True), _when("created_at"), _when("updated_at"),
                    sa.PrimaryKeyConstraint("id"), sa.UniqueConstraint("entry_id"))
    op.create_table("grants", _text("id", _ID),
                    sa.Column("listing_id", sa.String(_ID), sa.ForeignKey("listings.id"), nullable=False, index=True),
                    _text("entry_id", _DIGEST, index=True),
                    sa.Column("tenant_id", sa.String(_ID), sa.ForeignKey("tenants.id"), nullable=False, index=True),
                    _text("status", 16), _text("terms"), _text("note"), _when("created_at"), _when("decided_at", True),
                    _when("exported_at", True), _when("revoked_at", True), sa.PrimaryKeyConstraint("id"))
    op.create_table("server_keys", _text("id", _ID),
                    sa.Column("tenant_id", sa.String(_ID), sa.ForeignKey("tenants.id"), nullable=False, index=True),
                    _text("name", 100), _text("public_key"), _text("fingerprint", _DIGEST), _when("created_at"),
                    sa.PrimaryKeyConstraint("id"), sa.UniqueConstraint("fingerprint"))
    op.create_table("usage_reports", _text("id", _ID),
                    sa.Column("tenant_id", sa.String(_ID), sa.ForeignKey("tenants.id"), nullable=False, index=True),
                    sa.Column("server_id", sa.String(_ID), sa.ForeignKey("server_keys.id"), nullable=False, index=True),
                    _text("file_sha256", _DIGEST), _text("model", 200), _text("period", 10, index=True), _text("status", 16),
                    sa.Column("first_seq", sa.Integer, nullable=True), sa.Column("last_seq", sa.Integer, nullable=True),
                    _text("last_hash", _DIGEST, nullable=True), sa.Column("requests", sa.Integer, nullable=False),
                    sa.Column("tokens", sa.BigInteger, nullable=False), sa.Column("charged_micros", sa.BigInteger, nullable=False),
                    _text("problems"), _when("created_at"), sa.PrimaryKeyConstraint("id"))
    op.create_table("usage_lines", sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("report_id", sa.String(_ID), sa.ForeignKey("usage_reports.id"), nullable=False, index=True),
                    _text("entry_id", _DIGEST, index=True), sa.Column("hits", sa.BigInteger, nullable=False),
                    sa.Column("routed_tokens", sa.Float, nullable=False), _text("status", 16), _text("grant_id", _ID, nullable=True),
                    sa.Column("charged_micros", sa.BigInteger, nullable=False), sa.UniqueConstraint("report_id", "entry_id"))
    op.create_table("ledger_lines", sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    _text("txn", _ID, index=True), _text("period", 10, index=True), _text("kind", 16),
                    _text("account", 200, index=True), sa.Column("amount_micros", sa.BigInteger, nullable=False),
                    _text("entry_id", _DIGEST, nullable=True), _text("origin_entry", _DIGEST, nullable=True), _text("source", _ID),
                    _when("created_at"))
    with op.batch_alter_table("exports") as batch:  # an export of listed models has no job of its own
        batch.alter_column("job_id", existing_type=sa.String(_ID), nullable=True)
        batch.add_column(sa.Column("models", sa.Text, nullable=True))
        batch.add_column(sa.Column("file_id", sa.String(_ID), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER ledger_lines_no_{action.lower()} BEFORE {action} ON ledger_lines "
                       f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END")
    else:
        op.execute("CREATE FUNCTION ledger_lines_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$")
        op.execute("CREATE TRIGGER ledger_lines_append_only BEFORE UPDATE OR DELETE ON ledger_lines "
                   "FOR EACH ROW EXECUTE FUNCTION ledger_lines_append_only()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP TRIGGER IF EXISTS ledger_lines_append_only ON ledger_lines")
        op.execute("DROP FUNCTION IF EXISTS ledger_lines_append_only()")
    for table in ("ledger_lines", "usage_lines", "usage_reports", "server_keys", "grants", "listings"):
        op.drop_table(table)
    with op.batch_alter_table("exports") as batch:
        batch.drop_column("file_id")
        batch.drop_column("models")
        batch.alter_column("job_id", existing_type=sa.String(_ID), nullable=False)
