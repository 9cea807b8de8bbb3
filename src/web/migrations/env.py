"""Alembic environment for the web tables: runs on a connection handed in by `web.database`."""

from __future__ import annotations

from alembic import context

from web.database import VERSION_TABLE
from web.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("web migrations run through web.database.upgrade_schema")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
