"""Alembic's environment for the catalog: always run from moeforge.library.catalog with a live connection."""

from alembic import context

import moeforge.service.market.schema  # noqa: F401  (the Centre's and the market's tables share the metadata)
import moeforge.service.schema  # noqa: F401
from moeforge.library.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
