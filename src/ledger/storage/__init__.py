"""Persistence of the ledger: tables (`schema`), engines and schema upgrade (`database`), the
storage contract (`persistence.EventStore`), its SQL shared by both backends (`sql`), one module
per backend (`sqlite`, `postgres`), the one event-to-row mapping (`rows`) and the audit's reads
(`audit_reads`). `store_for` picks the implementation for a database's engines.
"""

from ledger.storage.database import Engines
from ledger.storage.persistence import EventStore
from ledger.storage.postgres import PostgresEventStore
from ledger.storage.sqlite import SqliteEventStore


def store_for(engines: Engines) -> EventStore:
    """The event store of the engines' backend."""
    if engines.backend == "sqlite":
        return SqliteEventStore(engines)
    return PostgresEventStore(engines)


__all__ = ["EventStore", "PostgresEventStore", "SqliteEventStore", "store_for"]
