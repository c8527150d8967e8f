"""The catalog: a real database indexing the library's entries (SQLite by default, PostgreSQL by URL).

DESIGN.md "The library". SQLAlchemy 2 over `sqlite:///…` (a file under $MOEFORGE_HOME, nothing to
start) or `postgresql://…` (a library shared by many owners; the `postgres` extra brings psycopg).
Alembic owns the schema (migrations/): a new catalog is created at the newest revision; an older
SQLite file is migrated on open (it has one owner), an older PostgreSQL catalog is refused with the
command that migrates it, since other owners share it. Inserting is idempotent (the entry id is a
content digest), so two processes depositing the same entry at once leave one row.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from moeforge.errors import ArtifactNotFound, ConfigError, StoreError
from moeforge.extras import require
from moeforge.library.entry import EntryManifest

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
CONNECT_TIMEOUT_S = 5
# Connections a process keeps open: at least as many as it holds sessions at once (the Centre's API thread pool, see
# ServiceSettings.api_threads, holds one per thread), so a busy process reuses them instead of opening and closing one
# per session (for SQLite, that is a file open and two pragmas each time).
POOL_SIZE = 16
FORMS = ("sqlite:///absolute/path/catalog.sqlite", "postgresql://user:password@host:5432/database")


@dataclass(frozen=True)
class EntrySummary:
    """One catalog row, as listings show it."""

    id: str
    domain: str
    base_model: str
    base_fingerprint: str
    source: str
    license: str
    n_slots: int
    domain_loss_before: float | None
    domain_loss_after: float | None
    general_ppl_before: float | None
    general_ppl_after: float | None
    created_at: datetime
    retired: bool
    retired_reason: str | None


def shown_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


class Catalog:
    """The catalog database at `url` (see open_catalog)."""

    def __init__(self, engine, url: str):
        self.engine, self.url = engine, url

    # --- writing -------------------------------------------------------------------------------------------------------

    def add(self, entry_id: str, manifest: EntryManifest) -> bool:
        """Index an entry; False if it was indexed already (by this or another process)."""
        from sqlalchemy.exc import IntegrityError
        from sqlalchemy.orm import Session

        from moeforge.library.schema import ContributorRow, EntryRow, ParentRow, SlotRow

        m = manifest.metrics
        row = EntryRow(
            id=entry_id, base_fingerprint=manifest.base_fingerprint, base_model=manifest.base_model,
            model_type=manifest.model_type, domain=manifest.domain, source=manifest.source, license=manifest.license,
            experts=manifest.experts, profile=manifest.profile, job_id=manifest.job_id, n_slots=len(manifest.slots),
            domain_loss_before=m.domain_loss_before, domain_loss_after=m.domain_loss_after,
            general_ppl_before=m.general_ppl_before, general_ppl_after=m.general_ppl_after,
            created_at=datetime.now(UTC), retired=False,
        )
        with Session(self.engine) as session:
            if session.get(EntryRow, entry_id) is not None:
                return False
            try:  # PostgreSQL raises at the flush (the insert waits for the other transaction), SQLite at the commit
                session.add(row)
                session.flush()  # the entry first: the other rows refer to it
                session.add_all([SlotRow(entry_id=entry_id, layer=la, expert=ex) for la, ex in manifest.slots])
                session.add_all([ParentRow(entry_id=entry_id, parent_id=p.entry, relation=p.relation, slots=p.slots)
                                 for p in manifest.parents])
                session.add_all([ContributorRow(entry_id=entry_id, contributor=c.id, role=c.role, share=c.share)
                                 for c in manifest.contributors])
                session.commit()
            except IntegrityError:  # another process indexed the same entry between our read and our write
                session.rollback()
                return False
        return True

    def retire(self, entry_id: str, reason: str) -> None:
        """Hide an entry from search and matching; it stays resolvable by id (entries are never deleted)."""
        from sqlalchemy.orm import Session

        from moeforge.library.schema import EntryRow

        with Session(self.engine) as session:
            row = self._row(session, entry_id)
            row.retired, row.retired_reason = True, reason
            session.commit()

    def set_background(self, base_fingerprint: str, profile_digest: str, tokens: int) -> None:
        from sqlalchemy.orm import Session

        from moeforge.library.schema import BackgroundRow

        with Session(self.engine) as session:
            session.merge(BackgroundRow(base_fingerprint=base_fingerprint, profile=profile_digest, tokens=tokens))
            session.commit()

    # --- reading -------------------------------------------------------------------------------------------------------

    def get(self, entry_id: str) -> EntrySummary:
        from sqlalchemy.orm import Session

        with Session(self.engine) as session:
            return _summary(self._row(session, entry_id))

    def resolve(self, prefix: str) -> str:
        """The full id of the one entry whose id starts with `prefix` (at least 6 hex characters)."""
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from moeforge.library.schema import EntryRow

        text = prefix.strip().lower()
        if len(text) < 6 or any(c not in "0123456789abcdef" for c in text):
            raise ConfigError(f"{prefix!r} is not an entry id: give its first 6 or more hex characters (see `moeforge library ls`).")
        with Session(self.engine) as session:
            ids = session.scalars(select(EntryRow.id).where(EntryRow.id.startswith(text)).limit(3)).all()
        if not ids:
            raise ArtifactNotFound(f"no library entry {prefix!r} in the catalog {shown_url(self.url)} (see `moeforge library ls`).")
        if len(ids) > 1:
            raise ConfigError(f"{prefix!r} matches several entries ({', '.join(i[:12] for i in ids)}…): give more characters.")
        return ids[0]

    def entries(self, *, base_fingerprint: str | None = None, domain: str | None = None, text: str | None = None,
                include_retired: bool = False) -> list[EntrySummary]:
        """Entries, newest first, filtered by base, exact domain, or a substring of domain, base name or id."""
        from sqlalchemy import or_, select
        from sqlalchemy.orm import Session

        from moeforge.library.schema import EntryRow

        query = select(EntryRow).order_by(EntryRow.created_at.desc(), EntryRow.id)
        if base_fingerprint is not None:
            query = query.where(EntryRow.base_fingerprint == base_fingerprint)
        if domain is not None:
            query = query.where(EntryRow.domain == domain)
        if text:
            like = f"%{text.lower()}%"
            query = query.where(or_(EntryRow.domain.ilike(like), EntryRow.base_model.ilike(like), EntryRow.id.like(like),
                                    EntryRow.license.ilike(like)))
        if not include_retired:
            query = query.where(EntryRow.retired.is_(False))
        with Session(self.engine) as session:
            return [_summary(row) for row in session.scalars(query)]

    def parents(self, entry_id: str) -> list[tuple[str, str, int]]:
        """(parent id, relation, slots) of an entry."""
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from moeforge.library.schema import ParentRow

        with Session(self.engine) as session:
            rows = session.scalars(select(ParentRow).where(ParentRow.entry_id == entry_id).order_by(ParentRow.parent_id))
            return [(r.parent_id, r.relation, r.slots) for r in rows]

    def children(self, entry_id: str) -> list[str]:
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from moeforge.library.schema import ParentRow

        with Session(self.engine) as session:
            return list(session.scalars(select(ParentRow.entry_id).where(ParentRow.parent_id == entry_id).order_by(ParentRow.entry_id)))

    def background(self, base_fingerprint: str) -> str | None:
        from sqlalchemy.orm import Session

        from moeforge.library.schema import BackgroundRow

        with Session(self.engine) as session:
            row = session.get(BackgroundRow, base_fingerprint)
            return None if row is None else row.profile

    def _row(self, session, entry_id: str):
        from moeforge.library.schema import EntryRow

        row = session.get(EntryRow, entry_id)
        if row is None:
            raise ArtifactNotFound(f"no library entry {entry_id[:12]}… in the catalog {shown_url(self.url)}.")
        return row


def open_catalog(url: str, *, migrate: bool | None = None) -> Catalog:
    """The catalog at `url`, created if new. `migrate`: bring an older schema to the newest (None: SQLite yes,
    PostgreSQL no, which raises ConfigError naming `moeforge library migrate`)."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.exc import ArgumentError, OperationalError
    from sqlalchemy.exc import DBAPIError

    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin and per-step lines are not the user's business
    scheme = urlsplit(url).scheme.split("+")[0]
    if scheme == "sqlite":
        path = url.removeprefix("sqlite:///")
        if path == url or not path.startswith("/"):
            raise ConfigError(f"catalog URL {url!r}: expected sqlite:///absolute/path (three slashes then the path).")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, pool_size=POOL_SIZE, max_overflow=POOL_SIZE)

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record):  # many readers beside one writer; wait, don't fail, on a busy file
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=30000")
    elif scheme in ("postgresql", "postgres"):
        require("postgres", f"the PostgreSQL catalog {shown_url(url)!r}")
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
        try:
            engine = create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}, pool_pre_ping=True,
                                   pool_size=POOL_SIZE, max_overflow=POOL_SIZE)
        except ArgumentError as exc:
            raise ConfigError(f"catalog URL {shown_url(url)!r}: {exc}.") from None
    else:
        raise ConfigError(f"catalog URL {shown_url(url)!r}: unknown scheme. Use one of: {'; '.join(FORMS)}.")
    try:
        _ensure_schema(engine, url, scheme, migrate)
    except (OperationalError, DBAPIError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(getattr(exc, "orig", exc)).strip() else type(exc).__name__
        raise StoreError(f"cannot reach the catalog {shown_url(url)}: {reason}. Is the database server running, and is the URL right?") from None
    return Catalog(engine, url)


def head_revision() -> str:
    return _script().get_current_head()


def current_revision(engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine) -> None:
    """Run every migration the database lacks."""
    from alembic import command

    with engine.begin() as connection:
        cfg = _config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def _ensure_schema(engine, url: str, scheme: str, migrate: bool | None) -> None:
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    known = {rev.revision for rev in _script().walk_revisions()}
    if current is not None and current not in known:
        raise ConfigError(f"the catalog {shown_url(url)} is at schema revision {current}, newer than this moeforge knows "
                          f"({head}): upgrade moeforge.")
    if current is None or migrate or (migrate is None and scheme == "sqlite"):
        if current is not None:
            log.info("migrating the catalog %s from schema %s to %s", shown_url(url), current, head)
        upgrade(engine)
        return
    raise ConfigError(f"the catalog {shown_url(url)} has schema revision {current}; this moeforge needs {head}. "
                      f"Migrate it (back it up first; it is shared): `moeforge library migrate --catalog {shown_url(url)}`.")


def _config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def _summary(row) -> EntrySummary:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)  # SQLite drops the zone
    return EntrySummary(
        id=row.id, domain=row.domain, base_model=row.base_model, base_fingerprint=row.base_fingerprint, source=row.source,
        license=row.license, n_slots=row.n_slots, domain_loss_before=row.domain_loss_before,
        domain_loss_after=row.domain_loss_after, general_ppl_before=row.general_ppl_before,
        general_ppl_after=row.general_ppl_after, created_at=created, retired=row.retired, retired_reason=row.retired_reason,
    )
