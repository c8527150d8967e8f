"""Alembic's environment for the catalog: always run from moeforge.library.catalog with a live connection."""

from alembic import context

import moeforge.service.schema  # noqa: F401  (the Centre's tables share the metadata)
from moeforge.library.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
