"""The event store contract: every query the ledger makes, written once in SQLAlchemy Core.

The writer's queries are synchronous functions of a `Connection`: on PostgreSQL the writer
runs them through `AsyncConnection.run_sync`; on SQLite it runs the whole batch in its own
thread on a pysqlite connection, so a batch costs one hand-off instead of one per statement.

Two implementations differ only where the backends do: PostgreSQL locks the batch's account
rows (SELECT ... FOR UPDATE, in sorted order so concurrent writers cannot deadlock), SQLite is
already serialised by BEGIN IMMEDIATE; and each names the driver errors worth a retry.
Driver errors are translated into ledger errors once, in the writer (`is_retryable`).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BindParameter,
    Connection,
    Row,
    Select,
    Table,
    bindparam,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.base import Executable

from ledger.domain import (
    AccountState,
    Event,
    EventType,
    ReplayError,
    apply,
    canonical_json,
    holds_from_record,
)
from ledger.errors import LedgerError, StorageError, error_from_record
from ledger.storage.database import Engines
from ledger.storage.schema import accounts, commands, events, hold_expiry, snapshots

# Rows per statement when streaming a whole log (audit): bounded memory per fetch.
STREAM_ROWS_PER_FETCH = 2_000


@dataclass(frozen=True, slots=True)
class AccountHead:
    account_id: str
    owner_id: str
    sequence: int
    head_hash: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused command as stored under its idempotency key."""

    account_id: str
    idempotency_key: str
    fingerprint: str
    error: LedgerError
    recorded_at_us: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    account_id: str
    sequence: int
    posted: int
    held: int
    holds_record: list[list[Any]]
    head_hash: str
    taken_at_us: int


@dataclass(slots=True)
class BatchWrite:
    """Everything one writer batch commits in one transaction."""

    events: list[Event] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    heads: dict[str, AccountHead] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)
    # Net effect on the hold-expiry index: a hold opened and closed in one batch is in neither.
    holds_opened: dict[str, Event] = field(default_factory=dict)
    holds_closed: list[str] = field(default_factory=list)


def new_account_id() -> str:
    return f"acct_{uuid.uuid4().hex[:20]}"


def event_to_row(event: Event) -> dict[str, Any]:
    return {
        "account_id": event.account_id,
        "sequence": event.sequence,
        "event_type": str(event.event_type),
        "amount": event.amount,
        "released_amount": event.released_amount,
        "hold_id": event.hold_id,
        "refers_to": event.refers_to,
        "expires_at_us": event.expires_at_us,
        "purpose": event.purpose,
        "reference": event.reference,
        "reason": event.reason,
        "source": event.source,
        "note": event.note,
        "posted_after": event.posted_after,
        "held_after": event.held_after,
        "idempotency_key": event.idempotency_key,
        "fingerprint": event.fingerprint,
        "recorded_at_us": event.recorded_at_us,
        "metadata_json": canonical_json(event.metadata),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def event_from_row(row: Row[Any]) -> Event:
    m = row._mapping
    return Event(
        account_id=m["account_id"],
        sequence=int(m["sequence"]),
        event_type=EventType(m["event_type"]),
        amount=int(m["amount"]),
        released_amount=int(m["released_amount"]),
        hold_id=m["hold_id"],
        refers_to=m["refers_to"],
        expires_at_us=None if m["expires_at_us"] is None else int(m["expires_at_us"]),
        purpose=m["purpose"],
        reference=m["reference"],
        reason=m["reason"],
        source=m["source"],
        note=m["note"],
        posted_after=int(m["posted_after"]),
        held_after=int(m["held_after"]),
        idempotency_key=m["idempotency_key"],
        fingerprint=m["fingerprint"],
        recorded_at_us=int(m["recorded_at_us"]),
        metadata=json.loads(m["metadata_json"]),
        prev_hash=m["prev_hash"],
        hash=m["hash"],
    )


EVENT_COLUMNS = [c for c in events.c if c.name != "position"]
EVENT_COLUMN_NAMES = [c.name for c in EVENT_COLUMNS]
assert EVENT_COLUMN_NAMES == [
    "account_id",
    "sequence",
    "event_type",
    "amount",
    "released_amount",
    "hold_id",
    "refers_to",
    "expires_at_us",
    "purpose",
    "reference",
    "reason",
    "source",
    "note",
    "posted_after",
    "held_after",
    "idempotency_key",
    "fingerprint",
    "recorded_at_us",
    "metadata_json",
    "prev_hash",
    "hash",
], "_event_tuple must follow the column order"


def _event_tuple(event: Event) -> tuple[Any, ...]:
    """The row of `event_to_row` as a tuple in EVENT_COLUMN_NAMES order (hot path)."""
    return (
        event.account_id,
        event.sequence,
        str(event.event_type),
        event.amount,
        event.released_amount,
        event.hold_id,
        event.refers_to,
        event.expires_at_us,
        event.purpose,
        event.reference,
        event.reason,
        event.source,
        event.note,
        event.posted_after,
        event.held_after,
        event.idempotency_key,
        event.fingerprint,
        event.recorded_at_us,
        canonical_json(event.metadata) if event.metadata else "{}",
        event.prev_hash,
        event.hash,
    )


# Built once: a statement object per batch costs more (cache key, coercion) than its SQL.
_ACCOUNT_IDS: BindParameter[str] = bindparam("account_ids", expanding=True)
# PostgreSQL: arrays instead of IN lists, so the SQL text (and its prepared statement) is
# the same whatever the batch size.
_PG_OUTCOME_PROBE = text(
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
_PG_EVENT_TYPES = {
    "sequence": "bigint",
    "amount": "bigint",
    "released_amount": "bigint",
    "expires_at_us": "bigint",
    "posted_after": "bigint",
    "held_after": "bigint",
    "recorded_at_us": "bigint",
}
_PG_EVENT_ARRAYS = ", ".join(
    f"CAST(:e{index} AS {_PG_EVENT_TYPES.get(name, 'text')}[])"
    for index, name in enumerate(EVENT_COLUMN_NAMES)
)
_PG_WRITE_BATCH = text(
    f"""
    WITH new_events AS (
        INSERT INTO ledger_events ({", ".join(EVENT_COLUMN_NAMES)})
        SELECT * FROM unnest({_PG_EVENT_ARRAYS})
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
_PG_LOCK_HEADS = text(
    """
    SELECT account_id, owner_id, head_sequence, head_hash FROM ledger_accounts
    WHERE account_id = ANY(CAST(:account_ids AS text[]))
    ORDER BY account_id
    FOR UPDATE
    """
)


class EventStore:
    """Backend-neutral queries; subclasses set locking and retryable errors."""

    backend = "generic"

    def __init__(self, engines: Engines) -> None:
        self.engines = engines
        self._lock_heads_query: Executable = self.lock_rows(
            select(
                accounts.c.account_id,
                accounts.c.owner_id,
                accounts.c.head_sequence,
                accounts.c.head_hash,
            )
            .where(accounts.c.account_id.in_(_ACCOUNT_IDS))
            .order_by(accounts.c.account_id)
        )
        names = ", ".join(EVENT_COLUMN_NAMES)
        self._insert_events_sql = self._sql(
            f"INSERT INTO ledger_events ({names}) VALUES ("
            + ", ".join(["{}"] * len(EVENT_COLUMN_NAMES))
            + ")",
            len(EVENT_COLUMN_NAMES),
        )
        self._insert_hold_sql = self._sql(
            "INSERT INTO ledger_hold_expiry (hold_id, account_id, amount, expires_at_us) "
            "VALUES ({}, {}, {}, {})",
            4,
        )
        self._delete_hold_sql = self._sql("DELETE FROM ledger_hold_expiry WHERE hold_id = {}", 1)
        self._update_head_sql = self._sql(
            "UPDATE ledger_accounts SET head_sequence = {}, head_hash = {} WHERE account_id = {}", 3
        )

    # -- backend differences -------------------------------------------------------------

    def lock_rows(self, query: Select[Any]) -> Select[Any]:
        return query

    def outcome_rows(self, connection: Connection, pairs: list[tuple[str, str]]) -> Sequence[Any]:
        """(account_id, idempotency_key, sequence, kind) of the pairs that have an outcome.

        Each backend probes the pairs its own way: one index lookup per pair."""
        raise NotImplementedError

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, IntegrityError)

    # -- accounts ------------------------------------------------------------------------

    async def default_account(self, owner_id: str) -> str | None:
        query = select(accounts.c.account_id).where(
            accounts.c.owner_id == owner_id, accounts.c.is_default.is_(True)
        )
        async with self.engines.read.connect() as connection:
            return (await connection.execute(query)).scalar_one_or_none()

    async def create_account(self, owner_id: str, *, is_default: bool, now_us: int) -> str:
        """Insert an account and its empty snapshot; IntegrityError if a default exists."""
        account_id = new_account_id()
        genesis = AccountState(account_id, owner_id)
        async with self.engines.write.begin() as connection:
            await connection.execute(
                insert(accounts).values(
                    account_id=account_id,
                    owner_id=owner_id,
                    is_default=is_default,
                    created_at_us=now_us,
                    head_sequence=0,
                    head_hash=genesis.head_hash,
                )
            )
            await connection.execute(
                insert(snapshots).values(
                    account_id=account_id,
                    sequence=0,
                    posted=0,
                    held=0,
                    holds_json="[]",
                    head_hash=genesis.head_hash,
                    taken_at_us=now_us,
                )
            )
        return account_id

    async def accounts_of(self, owner_id: str) -> list[str]:
        query = (
            select(accounts.c.account_id)
            .where(accounts.c.owner_id == owner_id)
            .order_by(accounts.c.is_default.desc(), accounts.c.created_at_us, accounts.c.account_id)
        )
        async with self.engines.read.connect() as connection:
            return list((await connection.execute(query)).scalars())

    async def account_owner(self, account_id: str) -> str | None:
        query = select(accounts.c.owner_id).where(accounts.c.account_id == account_id)
        async with self.engines.read.connect() as connection:
            return (await connection.execute(query)).scalar_one_or_none()

    # -- inside the writer's transaction ----------------------------------------------

    def lock_heads(
        self, connection: Connection, account_ids: Iterable[str]
    ) -> dict[str, AccountHead]:
        """Heads of the accounts in one statement (locked, in sorted order, on PostgreSQL)."""
        rows = connection.execute(
            self._lock_heads_query, {"account_ids": sorted(set(account_ids))}
        ).all()
        return {row[0]: AccountHead(row[0], row[1], int(row[2]), row[3]) for row in rows}

    def load_state(self, connection: Connection, account_id: str, owner_id: str) -> AccountState:
        """Latest snapshot plus the events after it: constant cost however long the log."""
        snapshot_query = (
            select(snapshots)
            .where(snapshots.c.account_id == account_id)
            .order_by(snapshots.c.sequence.desc())
            .limit(1)
        )
        row = connection.execute(snapshot_query).one_or_none()
        state = AccountState(account_id, owner_id)
        if row is not None:
            m = row._mapping
            state.sequence = int(m["sequence"])
            state.posted = int(m["posted"])
            state.held = int(m["held"])
            state.head_hash = m["head_hash"]
            state.holds = holds_from_record(json.loads(m["holds_json"]))
        tail_query = (
            select(*EVENT_COLUMNS)
            .where(events.c.account_id == account_id, events.c.sequence > state.sequence)
            .order_by(events.c.sequence)
        )
        try:
            for event_row in connection.execute(tail_query).all():
                apply(state, event_from_row(event_row))
        except ReplayError as exc:
            raise StorageError(f"the log of account {account_id} does not replay: {exc}") from exc
        return state

    def find_outcomes(
        self, connection: Connection, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Event | Refusal]:
        """Earlier outcomes (events or refusals) of these (account_id, idempotency_key) pairs."""
        found: dict[tuple[str, str], Event | Refusal] = {}
        if not keys:
            return found
        pairs = sorted(set(keys))
        wanted = set(pairs)
        hits = [row for row in self.outcome_rows(connection, pairs) if (row[0], row[1]) in wanted]
        # Hits are retries, rare next to first attempts: fetch their full rows one by one.
        for account_id, key, sequence, kind in hits:
            if kind == "event":
                event = self.event_at(connection, account_id, int(sequence))
                assert event is not None, "an event vanished inside a write transaction"
                found[(account_id, key)] = event
                continue
            query = select(commands).where(
                commands.c.account_id == account_id, commands.c.idempotency_key == key
            )
            m = connection.execute(query).one()._mapping
            found[(account_id, key)] = Refusal(
                account_id,
                key,
                m["fingerprint"],
                error_from_record(m["error_code"], json.loads(m["error_details_json"])),
                int(m["recorded_at_us"]),
            )
        return found

    def event_at(self, connection: Connection, account_id: str, sequence: int) -> Event | None:
        query = select(*EVENT_COLUMNS).where(
            events.c.account_id == account_id, events.c.sequence == sequence
        )
        row = connection.execute(query).one_or_none()
        return None if row is None else event_from_row(row)

    def refunded_total(self, connection: Connection, account_id: str, event_id: str) -> int:
        query = select(func.coalesce(func.sum(events.c.amount), 0)).where(
            events.c.account_id == account_id,
            events.c.refers_to == event_id,
            events.c.event_type == str(EventType.REFUNDED),
        )
        return int(connection.execute(query).scalar_one())

    def _sql(self, template: str, count: int) -> str:
        """Fill `{}` with `count` driver placeholders in this backend's paramstyle."""
        if self.engines.write.dialect.paramstyle == "numeric_dollar":
            marks = [f"${i}" for i in range(1, count + 1)]
        else:
            marks = ["?"] * count
        return template.format(*marks)

    def write(self, connection: Connection, batch: BatchWrite) -> None:
        """Commit-ready writes of one batch, one executemany per table touched.

        Plain driver SQL with tuples: SQLAlchemy's per-row parameter processing was the
        largest cost of a batch, and these statements never change.
        """
        if batch.events:
            connection.exec_driver_sql(
                self._insert_events_sql, [_event_tuple(e) for e in batch.events]
            )
        if batch.refusals:
            connection.execute(
                insert(commands),
                [
                    {
                        "account_id": r.account_id,
                        "idempotency_key": r.idempotency_key,
                        "fingerprint": r.fingerprint,
                        "error_code": r.error.code,
                        "error_details_json": canonical_json(r.error.details),
                        "recorded_at_us": r.recorded_at_us,
                    }
                    for r in batch.refusals
                ],
            )
        if batch.holds_opened:
            connection.exec_driver_sql(
                self._insert_hold_sql,
                [
                    (e.hold_id, e.account_id, e.amount, e.expires_at_us)
                    for e in batch.holds_opened.values()
                ],
            )
        if batch.holds_closed:
            connection.exec_driver_sql(
                self._delete_hold_sql, [(hold_id,) for hold_id in batch.holds_closed]
            )
        if batch.heads:
            connection.exec_driver_sql(
                self._update_head_sql,
                [(h.sequence, h.head_hash, h.account_id) for h in batch.heads.values()],
            )
        if batch.snapshots:
            connection.execute(
                insert(snapshots),
                [
                    {
                        "account_id": s.account_id,
                        "sequence": s.sequence,
                        "posted": s.posted,
                        "held": s.held,
                        "holds_json": canonical_json(s.holds_record),
                        "head_hash": s.head_hash,
                        "taken_at_us": s.taken_at_us,
                    }
                    for s in batch.snapshots
                ],
            )

    # -- reads ---------------------------------------------------------------------------

    async def read_state(self, account_id: str) -> AccountState | None:
        """Current state from snapshot plus tail, in one read transaction."""
        async with self.engines.read.begin() as connection:
            row = (
                await connection.execute(
                    select(accounts.c.owner_id).where(accounts.c.account_id == account_id)
                )
            ).one_or_none()
            if row is None:
                return None
            return await connection.run_sync(self.load_state, account_id, row[0])

    async def history(
        self,
        account_id: str,
        *,
        before_sequence: int | None,
        limit: int,
        types: Sequence[str] | None,
        since_us: int | None,
        until_us: int | None,
    ) -> list[Event]:
        """Newest first, at most `limit` events with sequence below `before_sequence`."""
        query = select(*EVENT_COLUMNS).where(events.c.account_id == account_id)
        if before_sequence is not None:
            query = query.where(events.c.sequence < before_sequence)
        if types:
            query = query.where(events.c.event_type.in_(list(types)))
        if since_us is not None:
            query = query.where(events.c.recorded_at_us >= since_us)
        if until_us is not None:
            query = query.where(events.c.recorded_at_us < until_us)
        query = query.order_by(events.c.sequence.desc()).limit(limit)
        async with self.engines.read.connect() as connection:
            return [event_from_row(row) for row in (await connection.execute(query)).all()]

    async def sums_by_type(self, account_id: str | None) -> dict[str, tuple[int, int]]:
        """Per event type: sum(amount), sum(released_amount)."""
        query = select(
            events.c.event_type,
            func.coalesce(func.sum(events.c.amount), 0),
            func.coalesce(func.sum(events.c.released_amount), 0),
        ).group_by(events.c.event_type)
        if account_id is not None:
            query = query.where(events.c.account_id == account_id)
        async with self.engines.read.connect() as connection:
            rows = (await connection.execute(query)).all()
        return {row[0]: (int(row[1]), int(row[2])) for row in rows}

    async def expired_holds(self, now_us: int, limit: int) -> list[tuple[str, str]]:
        """(account_id, hold_id) of unresolved holds that expired at or before `now_us`."""
        query = (
            select(hold_expiry.c.account_id, hold_expiry.c.hold_id)
            .where(hold_expiry.c.expires_at_us <= now_us)
            .order_by(hold_expiry.c.expires_at_us, hold_expiry.c.hold_id)
            .limit(limit)
        )
        async with self.engines.read.connect() as connection:
            return [(row[0], row[1]) for row in (await connection.execute(query)).all()]

    # -- audit ---------------------------------------------------------------------------

    async def stream_events(self, account_id: str | None) -> AsyncIterator[Event]:
        """Every event (of one account, or all) ordered by account and sequence."""
        async with self.engines.read.connect() as connection:
            result = await connection.stream(_events_query(account_id))
            async for row in result:
                yield event_from_row(row)

    @contextlib.asynccontextmanager
    async def audit_reads(self, account_id: str | None) -> AsyncIterator[AuditReads]:
        """Every read of one audit in one transaction, so they all see one moment of the
        database however many commits happen meanwhile (SQLite: a deferred BEGIN, i.e. one WAL
        read snapshot; PostgreSQL: REPEATABLE READ READ ONLY, events streamed on the same
        connection). Nothing is written."""
        async with self.engines.read.connect() as connection:
            if self.backend == "postgresql":
                connection = await connection.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
            async with connection.begin():
                yield AuditReads(connection, account_id)


@dataclass(frozen=True, slots=True)
class MalformedRow:
    """A stored row the audit cannot decode (hand-edited or damaged): reported, then skipped."""

    table: str
    account_id: str | None
    sequence: int | None
    detail: str
    hash: str | None = None


def _events_query(account_id: str | None) -> Select[Any]:
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


_EVENT_TEXT = ("account_id", "idempotency_key", "fingerprint", "prev_hash", "hash")
_EVENT_OPTIONAL_TEXT = ("hold_id", "refers_to", "purpose", "reference", "reason", "source", "note")


def decode_event(row: Row[Any]) -> Event | MalformedRow:
    """The event of a row, or what is wrong with the row (for the audit: never raises)."""
    m = row._mapping
    try:
        event = event_from_row(row)
        for name in _EVENT_TEXT:
            if not isinstance(getattr(event, name), str):
                raise ValueError(f"{name} is not text")
        for name in _EVENT_OPTIONAL_TEXT:
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


class AuditReads:
    """The audit's queries on one connection inside one transaction (see `audit_reads`).

    Rows that do not decode come back as `MalformedRow` so one damaged row cannot hide the
    findings of every other account."""

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
        """Every event ordered by account and sequence, fetched in bounded chunks."""
        result = await self._connection.stream(_events_query(self._account_id))
        async for row in result:
            yield decode_event(row)


def _sqlite_lock_heads_sql(count: int) -> str:
    marks = ", ".join(["?"] * count)
    return (
        "SELECT account_id, owner_id, head_sequence, head_hash FROM ledger_accounts "
        f"WHERE account_id IN ({marks}) ORDER BY account_id"
    )


def _sqlite_outcome_sql(count: int) -> str:
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


class SqliteEventStore(EventStore):
    """SQLite: BEGIN IMMEDIATE already serialises writers, so no row locks."""

    backend = "sqlite"

    def lock_heads(
        self, connection: Connection, account_ids: Iterable[str]
    ) -> dict[str, AccountHead]:
        """As the generic query, as plain driver SQL: SQLAlchemy's expansion of the IN list
        cost more per batch than SQLite's lookup of the rows."""
        wanted = sorted(set(account_ids))
        rows = connection.exec_driver_sql(_sqlite_lock_heads_sql(len(wanted)), tuple(wanted))
        return {row[0]: AccountHead(row[0], row[1], int(row[2]), row[3]) for row in rows}

    def outcome_rows(self, connection: Connection, pairs: list[tuple[str, str]]) -> Sequence[Any]:
        """The pairs as a VALUES list joined to each table: one index lookup per pair, where
        two IN lists probe every account with every key (16 x 64 lookups per table in the
        benchmark's batches)."""
        parameters = tuple(value for pair in pairs for value in pair)
        return connection.exec_driver_sql(_sqlite_outcome_sql(len(pairs)), parameters).all()

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, IntegrityError):
            return True
        if isinstance(exc, DBAPIError):
            text = str(exc.orig).lower()
            return "locked" in text or "busy" in text
        return False


class PostgresEventStore(EventStore):
    """PostgreSQL: lock account rows; retry serialization failures and deadlocks."""

    backend = "postgresql"
    RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505", "55P03"})

    def lock_rows(self, query: Select[Any]) -> Select[Any]:
        return query.with_for_update()

    def __init__(self, engines: Engines) -> None:
        super().__init__(engines)
        self._lock_heads_query = _PG_LOCK_HEADS

    def write(self, connection: Connection, batch: BatchWrite) -> None:
        """Events, hold-index changes and heads in one statement (arrays unnested in
        data-modifying CTEs): one round trip instead of four. Rare rows (refusals, snapshots)
        go through the generic path."""
        if batch.events:
            columns = list(zip(*(_event_tuple(e) for e in batch.events), strict=True))
            parameters: dict[str, Any] = {
                f"e{index}": list(values) for index, values in enumerate(columns)
            }
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
            connection.execute(_PG_WRITE_BATCH, parameters)
        rare = BatchWrite(refusals=batch.refusals, snapshots=batch.snapshots)
        super().write(connection, rare)

    def outcome_rows(self, connection: Connection, pairs: list[tuple[str, str]]) -> Sequence[Any]:
        """A join with the pairs unnested from two arrays: one index lookup per pair."""
        parameters = {
            "account_ids": [account_id for account_id, _ in pairs],
            "keys": [key for _, key in pairs],
        }
        return connection.execute(_PG_OUTCOME_PROBE, parameters).all()

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, DBAPIError):
            orig = exc.orig
            state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
            return state in self.RETRYABLE_SQLSTATES or isinstance(exc, IntegrityError)
        return False


def store_for(engines: Engines) -> EventStore:
    if engines.backend == "sqlite":
        return SqliteEventStore(engines)
    return PostgresEventStore(engines)
