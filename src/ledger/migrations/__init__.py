"""Alembic migrations of the ledger's own tables (version table `ledger_alembic_version`)."""
