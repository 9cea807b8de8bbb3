"""The event store on PostgreSQL: `PostgresEventStore`.

The batch's account rows are locked (SELECT ... FOR UPDATE, in sorted order so concurrent
writers cannot deadlock); whole columns are bound as typed arrays and unnested, so each
statement's text (and its prepared statement) is the same whatever the batch size and a batch's
common rows go in one round trip; serialization failures, deadlocks, unique violations and lock
timeouts are worth a retry; the audit reads in REPEATABLE READ READ ONLY.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.storage.budget_usage import write_budget_usage
from ledger.storage.persistence import AccountHead, BatchWrite
from ledger.storage.rows import EVENT_COLUMN_NAMES, EVENT_COLUMN_TYPES, event_tuple
from ledger.storage.sql import SqlEventStore, check_batch

_OUTCOME_PROBE = text(
    """
    SELECT e.account_id, e.idempotency_key, e.sequence, 'event' AS kind
    FROM ledger_events e
    JOIN unnest(CAST(:account_ids AS text[]), CAST(:keys AS text[])) AS k(account_id, key)
      ON e.account_id = k.account_id AND e.idempotency_key = k.key
    UNION ALL
    SELECT c.account_id, c.idempotency_key, NULL, 'refusal' AS kind
    FROM ledger_commands c
    JOIN unnest(CAST(:account_ids AS text[]), CAST(:keys AS text[])) AS k(account_id, key)
      ON c.account_id = k.account_id AND c.idempotency_key = k.key
    """
)
_EVENT_ARRAYS = ", ".join(
    f"CAST(:e{index} AS {'bigint' if is_bigint else 'text'}[])"
    for index, (_, is_bigint) in enumerate(EVENT_COLUMN_TYPES)
)
_WRITE_BATCH = text(
    f"""
    WITH new_events AS (
        INSERT INTO ledger_events ({", ".join(EVENT_COLUMN_NAMES)})
        SELECT * FROM unnest({_EVENT_ARRAYS})
    ), opened AS (
        INSERT INTO ledger_hold_expiry (hold_id, account_id, amount, expires_at_us)
        SELECT * FROM unnest(CAST(:o_hold AS text[]), CAST(:o_account AS text[]),
                             CAST(:o_amount AS bigint[]), CAST(:o_expires AS bigint[]))
    ), closed AS (
        DELETE FROM ledger_hold_expiry WHERE hold_id = ANY(CAST(:c_hold AS text[]))
    )
    UPDATE ledger_accounts AS a SET head_sequence = h.sequence, head_hash = h.hash
    FROM unnest(CAST(:h_account AS text[]), CAST(:h_sequence AS bigint[]),
                CAST(:h_hash AS text[])) AS h(account_id, sequence, hash)
    WHERE a.account_id = h.account_id
    """
)
_LOCK_HEADS = text(
    """
    SELECT account_id, owner_id, head_sequence, head_hash FROM ledger_accounts
    WHERE account_id = ANY(CAST(:account_ids AS text[]))
    ORDER BY account_id
    FOR UPDATE
    """
)


def _write_parameters(batch: BatchWrite) -> dict[str, Any]:
    """The batch's events, hold-index changes and heads as one array per column."""
    columns = list(zip(*(event_tuple(e) for e in batch.events), strict=True))
    parameters: dict[str, Any] = {f"e{index}": list(values) for index, values in enumerate(columns)}
    opened = list(batch.holds_opened.values())
    parameters.update(
        o_hold=[e.hold_id for e in opened],
        o_account=[e.account_id for e in opened],
        o_amount=[e.amount for e in opened],
        o_expires=[e.expires_at_us for e in opened],
        c_hold=list(batch.holds_closed),
        h_account=[h.account_id for h in batch.heads.values()],
        h_sequence=[h.sequence for h in batch.heads.values()],
        h_hash=[h.head_hash for h in batch.heads.values()],
    )
    return parameters


class PostgresEventStore(SqlEventStore):
    """PostgreSQL: lock account rows; retry serialization failures and deadlocks."""

    backend = "postgresql"
    RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505", "55P03"})

    def lock_heads(
        self, connection: Connection, account_ids: Iterable[str]
    ) -> dict[str, AccountHead]:
        """The heads in one statement, locked in sorted order (no deadlock between writers)."""
        rows = connection.execute(_LOCK_HEADS, {"account_ids": sorted(set(account_ids))}).all()
        return {row[0]: AccountHead(row[0], row[1], int(row[2]), row[3]) for row in rows}

    def write(self, connection: Connection, batch: BatchWrite) -> None:
        """Events, hold-index changes and heads in one statement (arrays unnested in
        data-modifying CTEs): one round trip instead of four. Rare rows (refusals, snapshots)
        go through the shared path."""
        check_batch(batch)
        if batch.events:
            connection.execute(_WRITE_BATCH, _write_parameters(batch))
        self._write_refusals_and_snapshots(connection, batch)
        write_budget_usage(connection, batch)

    def outcome_rows(self, connection: Connection, pairs: list[tuple[str, str]]) -> Sequence[Any]:
        """A join with the pairs unnested from two arrays: one index lookup per pair."""
        parameters = {
            "account_ids": [account_id for account_id, _ in pairs],
            "keys": [key for _, key in pairs],
        }
        return connection.execute(_OUTCOME_PROBE, parameters).all()

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, DBAPIError):
            orig = exc.orig
            state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
            return state in self.RETRYABLE_SQLSTATES or isinstance(exc, IntegrityError)
        return False

    async def _audit_connection(self, connection: AsyncConnection) -> AsyncConnection:
        return await connection.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
