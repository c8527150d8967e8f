"""The Centre's database: the library catalog's database (one schema history, migrations/), opened once per process."""

import json
import secrets
from contextlib import contextmanager
from datetime import UTC, datetime

from moeforge.library.catalog import open_catalog


def now() -> datetime:
    return datetime.now(UTC)


def stamp(when: datetime | None) -> int | None:
    """Unix seconds, as the OpenAI shapes give times (SQLite drops the zone: its times are UTC)."""
    if when is None:
        return None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def loads(text: str | None, default=None):
    return default if text is None else json.loads(text)


def dumps(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def add_event(session, job_id: str, message: str, *, level: str = "info", type: str = "message", data=None) -> None:
    """One line of a job's `events` (type metrics: `data` holds the figures)."""
    from moeforge.service.schema import EventRow

    session.add(EventRow(job_id=job_id, created_at=now(), level=level, type=type, message=message,
                         data=None if data is None else dumps(data)))


def centre_library(db: "Database", library_store: str):
    """The expert library on the Centre's database (its catalog tables) and the library's blob store."""
    from moeforge.library.catalog import Catalog
    from moeforge.library.open import Library
    from moeforge.store.open import open_store

    return Library(Catalog(db.engine, db.url), open_store(library_store))


class Database:
    """Sessions on the database at `url` (migrated to the newest schema on open)."""

    def __init__(self, url: str, *, migrate: bool | None = None):
        self.url = url
        self.engine = open_catalog(url, migrate=migrate).engine

    @contextmanager
    def session(self):
        """A session that commits when the block ends cleanly and rolls back otherwise."""
        from sqlalchemy.orm import Session

        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
