"""The audit's reads in SQL: every table of the ledger, decoded row by row without raising.

`SqlAuditReads` runs on one connection inside one read transaction (see
`SqlEventStore.audit_reads`); a row that does not decode becomes a `MalformedRow` that the audit
reports, so one damaged row cannot hide the findings of every other account.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import Row, Select, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.domain import Event, EventType, holds_from_record
from ledger.storage.persistence import AccountHead, AuditReads, MalformedRow, Snapshot
from ledger.storage.rows import EVENT_COLUMNS, OPTIONAL_TEXT_FIELDS, TEXT_FIELDS, event_from_row
from ledger.storage.schema import accounts, commands, events, hold_expiry, snapshots

# Rows per statement when streaming a whole log (audit): bounded memory per fetch.
STREAM_ROWS_PER_FETCH = 2_000


def events_query(account_id: str | None) -> Select[Any]:
    """Every event (of one account, or all) by account and sequence, fetched in chunks."""
    query = select(*EVENT_COLUMNS).order_by(events.c.account_id, events.c.sequence)
    if account_id is not None:
        query = query.where(events.c.account_id == account_id)
    return query.execution_options(yield_per=STREAM_ROWS_PER_FETCH)


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _malformed(table: str, m: Any, exc: Exception, *, sequence: object = None) -> MalformedRow:
    return MalformedRow(
        table,
        _text_or_none(m.get("account_id")),
        _int_or_none(sequence),
        f"{table}: {type(exc).__name__}: {exc}",
        _text_or_none(m.get("hash")),
    )


def _check_decoded(event: Event) -> None:
    """What a decoded row must be before the audit can replay it (types, not money)."""
    for name in TEXT_FIELDS:
        if not isinstance(getattr(event, name), str):
            raise ValueError(f"{name} is not text")
    for name in OPTIONAL_TEXT_FIELDS:
        if getattr(event, name) is not None and not isinstance(getattr(event, name), str):
            raise ValueError(f"{name} is not text")
    metadata = event.metadata
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int) and not isinstance(v, bool)
        for k, v in metadata.items()
    ):
        raise ValueError("metadata_json is not an object of text or integer values")
    if event.event_type is EventType.HOLD_PLACED and (
        event.hold_id is None or event.expires_at_us is None
    ):
        raise ValueError("a hold_placed event without hold_id or expires_at_us")


def decode_event(row: Row[Any]) -> Event | MalformedRow:
    """The event of a row, or what is wrong with the row (for the audit: never raises)."""
    m = row._mapping
    try:
        event = event_from_row(row)
        _check_decoded(event)
        return event
    except Exception as exc:  # any undecodable row is a finding, not a crash
        return _malformed("ledger_events", m, exc, sequence=m.get("sequence"))


def _decode_head(row: Row[Any]) -> AccountHead | MalformedRow:
    m = row._mapping
    try:
        head = AccountHead(m["account_id"], m["owner_id"], int(m["head_sequence"]), m["head_hash"])
        if not all(isinstance(v, str) for v in (head.account_id, head.owner_id, head.head_hash)):
            raise ValueError("account_id, owner_id and head_hash must be text")
        return head
    except Exception as exc:
        return _malformed("ledger_accounts", m, exc)


def _decode_snapshot(row: Row[Any]) -> Snapshot | MalformedRow:
    m = row._mapping
    try:
        record = json.loads(m["holds_json"])
        if not isinstance(record, list):
            raise ValueError("holds_json is not a list")
        holds_from_record(record)  # every entry must decode
        return Snapshot(
            m["account_id"],
            int(m["sequence"]),
            int(m["posted"]),
            int(m["held"]),
            record,
            m["head_hash"],
            int(m["taken_at_us"]),
        )
    except Exception as exc:
        return _malformed("ledger_snapshots", m, exc, sequence=m.get("sequence"))


def _decode_hold(row: Row[Any]) -> tuple[str, tuple[str, int, int]] | MalformedRow:
    m = row._mapping
    try:
        return m["hold_id"], (m["account_id"], int(m["amount"]), int(m["expires_at_us"]))
    except Exception as exc:
        return _malformed("ledger_hold_expiry", m, exc)


class SqlAuditReads(AuditReads):
    """The audit's queries on one connection inside one transaction."""

    def __init__(self, connection: AsyncConnection, account_id: str | None) -> None:
        self._connection = connection
        self._account_id = account_id

    async def _rows(self, table: Table, *order: Any) -> Sequence[Row[Any]]:
        query = select(table).order_by(*order)
        if self._account_id is not None:
            query = query.where(table.c.account_id == self._account_id)
        return (await self._connection.execute(query)).all()

    async def heads(self) -> list[AccountHead | MalformedRow]:
        return [_decode_head(r) for r in await self._rows(accounts, accounts.c.account_id)]

    async def snapshots(self) -> list[Snapshot | MalformedRow]:
        rows = await self._rows(snapshots, snapshots.c.account_id, snapshots.c.sequence)
        return [_decode_snapshot(r) for r in rows]

    async def hold_index(self) -> list[tuple[str, tuple[str, int, int]] | MalformedRow]:
        return [_decode_hold(r) for r in await self._rows(hold_expiry, hold_expiry.c.hold_id)]

    async def refusals(self) -> list[tuple[str, str, str]]:
        rows = await self._rows(commands, commands.c.account_id, commands.c.idempotency_key)
        return [
            (r._mapping["account_id"], r._mapping["idempotency_key"], r._mapping["error_code"])
            for r in rows
        ]

    async def events(self) -> AsyncIterator[Event | MalformedRow]:
        result = await self._connection.stream(events_query(self._account_id))
        async for row in result:
            yield decode_event(row)
