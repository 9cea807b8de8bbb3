"""Persistence of the ledger: schema, engines and migrations, and the event store contract."""
