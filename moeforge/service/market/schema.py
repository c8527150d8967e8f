"""The marketplace's tables, in the Centre's database; migrations/versions/0004_market.py creates them.

The earnings ledger (`ledger_lines`) is append-only: the migration installs triggers that refuse
UPDATE and DELETE on it (SQLite and PostgreSQL alike), so a correction is a new, reversing line.
"""

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from moeforge.library.schema import DIGEST, Base
from moeforge.service.schema import ID


class ListingRow(Base):
    """One library entry on the market; search filters on the columns copied from the catalog row."""

    __tablename__ = "listings"
    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    entry_id: Mapped[str] = mapped_column(String(DIGEST), unique=True)
    owner_tenant: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)  # the payee "owner" of the entry
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    tags: Mapped[str] = mapped_column(Text)  # JSON list of domain tags
    licence: Mapped[str] = mapped_column(Text)  # JSON: terms.py Licence
    licence_id: Mapped[str] = mapped_column(String(80), index=True)  # the SPDX id or LicenseRef- name, for filters
    price_kind: Mapped[str] = mapped_column(String(16), index=True)  # free | per_mtok | per_export
    price_micros: Mapped[int] = mapped_column(BigInteger)  # per million routed tokens, or per export
    visibility: Mapped[str] = mapped_column(String(16), index=True)  # public | gated | private
    domain: Mapped[str] = mapped_column(String(200), index=True)
    base_model: Mapped[str] = mapped_column(String(200), index=True)
    base_fingerprint: Mapped[str] = mapped_column(String(DIGEST))
    domain_gain: Mapped[float | None] = mapped_column(Float, nullable=True)  # held-out loss before − after
    general_ppl_change: Mapped[float | None] = mapped_column(Float, nullable=True)  # after / before − 1
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GrantRow(Base):
    """A tenant's access to a listing, with the terms it was given (a later price change does not touch them)."""

    __tablename__ = "grants"
    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    listing_id: Mapped[str] = mapped_column(ForeignKey("listings.id"), index=True)
    entry_id: Mapped[str] = mapped_column(String(DIGEST), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | active | rejected | revoked
    terms: Mapped[str] = mapped_column(Text)  # JSON: terms.py Terms at the time of the grant
    note: Mapped[str] = mapped_column(Text)  # the requester's reason (gated listings ask for one)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    exported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # first bundle under it
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ServerKeyRow(Base):
    """A tenant's `moeforge serve` ledger key: usage reports must verify with a key the tenant registered."""

    __tablename__ = "server_keys"
    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    public_key: Mapped[str] = mapped_column(Text)  # PEM
    fingerprint: Mapped[str] = mapped_column(String(DIGEST), unique=True)  # sha256 of the key's DER
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UsageReportRow(Base):
    """One usage ledger file handed in: accepted (its new records priced) or refused (kept, with why)."""

    __tablename__ = "usage_reports"
    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    server_id: Mapped[str] = mapped_column(ForeignKey("server_keys.id"), index=True)
    file_sha256: Mapped[str] = mapped_column(String(DIGEST))
    model: Mapped[str] = mapped_column(String(200))
    period: Mapped[str] = mapped_column(String(10), index=True)  # YYYY-MM-DD, the ledger's UTC day
    status: Mapped[str] = mapped_column(String(16))  # accepted | refused
    first_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the new records priced: first_seq..last_seq
    last_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_hash: Mapped[str | None] = mapped_column(String(DIGEST), nullable=True)
    requests: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger)  # prompt + completion tokens of the new records
    charged_micros: Mapped[int] = mapped_column(BigInteger)
    problems: Mapped[str] = mapped_column(Text)  # JSON list: why it was refused
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UsageLineRow(Base):
    """Per report and entry: the routed tokens, what they were (priced, free, own, unlicensed, unknown), the charge."""

    __tablename__ = "usage_lines"
    __table_args__ = (UniqueConstraint("report_id", "entry_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_id: Mapped[str] = mapped_column(ForeignKey("usage_reports.id"), index=True)
    entry_id: Mapped[str] = mapped_column(String(DIGEST), index=True)
    hits: Mapped[int] = mapped_column(BigInteger)  # token-expert routings to the entry's experts
    routed_tokens: Mapped[float] = mapped_column(Float)  # Σ request tokens × the entry's share of the request's routings
    status: Mapped[str] = mapped_column(String(16))  # priced | free | own | unlicensed | unknown
    grant_id: Mapped[str | None] = mapped_column(String(ID), nullable=True)
    charged_micros: Mapped[int] = mapped_column(BigInteger)


class LedgerLineRow(Base):
    """One posting of the double-entry earnings ledger: the lines of a transaction sum to zero."""

    __tablename__ = "ledger_lines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    txn: Mapped[str] = mapped_column(String(ID), index=True)
    period: Mapped[str] = mapped_column(String(10), index=True)  # YYYY-MM-DD
    kind: Mapped[str] = mapped_column(String(16))  # usage | export
    account: Mapped[str] = mapped_column(String(200), index=True)  # customer:… | payee:… | fee:platform
    amount_micros: Mapped[int] = mapped_column(BigInteger)  # + credit to the account, − debit
    entry_id: Mapped[str | None] = mapped_column(String(DIGEST), nullable=True)  # the entry whose share this is
    origin_entry: Mapped[str | None] = mapped_column(String(DIGEST), nullable=True)  # the entry that was used
    source: Mapped[str] = mapped_column(String(ID))  # the usage report or export it came from
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
