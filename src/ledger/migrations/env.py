"""Alembic environment of the ledger: runs on the connection the ledger hands over.

The ledger calls Alembic programmatically (`ledger.storage.database.upgrade_schema`) with an
open connection in `config.attributes["connection"]`; its own version table keeps it apart
from the web package's migrations in the same database.
"""

from __future__ import annotations

from alembic import context

from ledger.storage.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("ledger migrations run through ledger.storage.database.upgrade_schema")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
