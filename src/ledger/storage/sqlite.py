"""The event store on SQLite: `SqliteEventStore`.

BEGIN IMMEDIATE already serialises writers, so heads are read without row locks; the batch's
heads and idempotency probes are plain driver SQL (SQLAlchemy's expansion of IN lists cost more
per batch than SQLite's lookups); "database is locked" and "busy" are worth a retry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from ledger.storage.persistence import AccountHead
from ledger.storage.sql import SqlEventStore


def _lock_heads_sql(count: int) -> str:
    marks = ", ".join(["?"] * count)
    return (
        "SELECT account_id, owner_id, head_sequence, head_hash FROM ledger_accounts "
        f"WHERE account_id IN ({marks}) ORDER BY account_id"
    )


def _outcome_sql(count: int) -> str:
    # CROSS JOIN makes SQLite loop over the wanted pairs and look each up in the unique
    # (account_id, idempotency_key) index, never the other way round.
    values = ", ".join(["(?, ?)"] * count)
    return f"""
    WITH wanted(account_id, idempotency_key) AS (VALUES {values})
    SELECT e.account_id, e.idempotency_key, e.sequence, 'event' AS kind
    FROM wanted AS w CROSS JOIN ledger_events AS e
    WHERE e.account_id = w.account_id AND e.idempotency_key = w.idempotency_key
    UNION ALL
    SELECT c.account_id, c.idempotency_key, NULL, 'refusal' AS kind
    FROM wanted AS w CROSS JOIN ledger_commands AS c
    WHERE c.account_id = w.account_id AND c.idempotency_key = w.idempotency_key
    """


class SqliteEventStore(SqlEventStore):
    """SQLite: BEGIN IMMEDIATE already serialises writers, so no row locks."""

    backend = "sqlite"

    def lock_heads(
        self, connection: Connection, account_ids: Iterable[str]
    ) -> dict[str, AccountHead]:
        """The heads in one plain driver statement: SQLAlchemy's expansion of the IN list
        cost more per batch than SQLite's lookup of the rows."""
        wanted = sorted(set(account_ids))
        rows = connection.exec_driver_sql(_lock_heads_sql(len(wanted)), tuple(wanted))
        return {row[0]: AccountHead(row[0], row[1], int(row[2]), row[3]) for row in rows}

    def outcome_rows(self, connection: Connection, pairs: list[tuple[str, str]]) -> Sequence[Any]:
        """The pairs as a VALUES list joined to each table: one index lookup per pair, where
        two IN lists probe every account with every key (16 x 64 lookups per table in the
        benchmark's batches)."""
        parameters = tuple(value for pair in pairs for value in pair)
        return connection.exec_driver_sql(_outcome_sql(len(pairs)), parameters).all()

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, IntegrityError):
            return True
        if isinstance(exc, DBAPIError):
            text = str(exc.orig).lower()
            return "locked" in text or "busy" in text
        return False
