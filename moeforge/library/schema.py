"""The catalog's tables (SQLAlchemy 2 declarative); migrations/ creates and evolves them with Alembic.

A row indexes an entry whose truth is its manifest in the store: the columns repeat what search,
lineage and the marketplace filter on, never anything the manifest does not say, plus the two
facts that are the catalog's own (when the entry was deposited, and whether it is retired).
"""

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DIGEST = 64


class Base(DeclarativeBase):
    pass


class EntryRow(Base):
    __tablename__ = "entries"
    id: Mapped[str] = mapped_column(String(DIGEST), primary_key=True)  # = store digest of the manifest
    base_fingerprint: Mapped[str] = mapped_column(String(DIGEST), index=True)
    base_model: Mapped[str] = mapped_column(String(200))
    model_type: Mapped[str] = mapped_column(String(64))
    domain: Mapped[str] = mapped_column(String(200), index=True)
    source: Mapped[str] = mapped_column(String(16))
    license: Mapped[str] = mapped_column(String(80))
    experts: Mapped[str] = mapped_column(String(DIGEST))
    profile: Mapped[str | None] = mapped_column(String(DIGEST), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    n_slots: Mapped[int] = mapped_column(Integer)
    domain_loss_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    domain_loss_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    general_ppl_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    general_ppl_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retired: Mapped[bool] = mapped_column(Boolean, default=False)
    retired_reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # revision 0002


class SlotRow(Base):
    __tablename__ = "entry_slots"
    entry_id: Mapped[str] = mapped_column(ForeignKey("entries.id"), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    expert: Mapped[int] = mapped_column(Integer, primary_key=True)


class ParentRow(Base):
    __tablename__ = "entry_parents"
    entry_id: Mapped[str] = mapped_column(ForeignKey("entries.id"), primary_key=True)
    parent_id: Mapped[str] = mapped_column(String(DIGEST), primary_key=True, index=True)
    relation: Mapped[str] = mapped_column(String(16))
    slots: Mapped[int] = mapped_column(Integer)


class ContributorRow(Base):
    __tablename__ = "entry_contributors"
    entry_id: Mapped[str] = mapped_column(ForeignKey("entries.id"), primary_key=True)
    contributor: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16))
    share: Mapped[float] = mapped_column(Float)


class BackgroundRow(Base):
    """The routing profile of general text on a base (revision 0002): what `match` subtracts."""

    __tablename__ = "backgrounds"
    base_fingerprint: Mapped[str] = mapped_column(String(DIGEST), primary_key=True)
    profile: Mapped[str] = mapped_column(String(DIGEST))
    tokens: Mapped[int] = mapped_column(Integer)
