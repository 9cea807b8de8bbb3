"""The ledger's Alembic revisions, one module per schema version, applied in order."""
