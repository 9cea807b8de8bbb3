"""The SQL both backends share: `SqlEventStore`, the `EventStore` contract in SQLAlchemy Core.

Everything here is backend-neutral; `sqlite.py` and `postgres.py` subclass it where the
backends differ (how the batch's account rows are locked and probed, the fast write path,
which driver errors are worth a retry, the audit's isolation level). Money invariants are
checked on both sides: every event and snapshot before `write`, every event and state read back
(`ledger.domain.invariants`), so a damaged row is an `InvariantViolation`, not a wrong balance.
"""

from __future__ import annotations

import abc
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import Connection, Select, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.domain import (
    AccountState,
    Event,
    EventType,
    ReplayError,
    apply,
    canonical_json,
    check_event,
    check_state,
    holds_from_record,
)
from ledger.errors import InvariantViolation, error_from_record
from ledger.storage.audit_reads import SqlAuditReads, events_query
from ledger.storage.budget_usage import write_budget_usage
from ledger.storage.database import Engines
from ledger.storage.persistence import AuditReads, BatchWrite, EventStore, Refusal
from ledger.storage.rows import EVENT_COLUMN_NAMES, EVENT_COLUMNS, event_from_row, event_tuple
from ledger.storage.schema import accounts, commands, events, hold_expiry, snapshots


def new_account_id() -> str:
    return f"acct_{uuid.uuid4().hex[:20]}"


def check_batch(batch: BatchWrite) -> None:
    """The invariants of everything a batch is about to write (cheap: no hashing)."""
    for event in batch.events:
        check_event(event)
    for snapshot in batch.snapshots:
        if not 0 <= snapshot.held <= snapshot.posted:
            raise InvariantViolation(
                f"snapshot of {snapshot.account_id} at {snapshot.sequence}: posted "
                f"{snapshot.posted}, held {snapshot.held}"
            )


class SqlEventStore(EventStore):
    """Backend-neutral queries; subclasses set locking, outcome probes and retryable errors."""

    def __init__(self, engines: Engines) -> None:
        self.engines = engines
        columns = len(EVENT_COLUMN_NAMES)
        self._insert_events_sql = self._sql(
            f"INSERT INTO ledger_events ({', '.join(EVENT_COLUMN_NAMES)}) VALUES ("
            + ", ".join(["{}"] * columns)
            + ")",
            columns,
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

    def _sql(self, template: str, count: int) -> str:
        """Fill `{}` with `count` driver placeholders in this backend's paramstyle."""
        if self.engines.write.dialect.paramstyle == "numeric_dollar":
            marks = [f"${i}" for i in range(1, count + 1)]
        else:
            marks = ["?"] * count
        return template.format(*marks)

    # -- backend differences -------------------------------------------------------------

    @abc.abstractmethod
    def outcome_rows(self, connection: Connection, pairs: list[tuple[str, str]]) -> Sequence[Any]:
        """(account_id, idempotency_key, sequence, kind) of the pairs that have an outcome.

        Each backend probes the pairs its own way: one index lookup per pair."""

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, IntegrityError)

    async def _audit_connection(self, connection: AsyncConnection) -> AsyncConnection:
        """The connection the audit's transaction runs on (a backend may set its isolation)."""
        return connection

    # -- accounts ------------------------------------------------------------------------

    async def default_account(self, owner_id: str) -> str | None:
        query = select(accounts.c.account_id).where(
            accounts.c.owner_id == owner_id, accounts.c.is_default.is_(True)
        )
        async with self.engines.read.connect() as connection:
            return (await connection.execute(query)).scalar_one_or_none()

    async def create_account(self, owner_id: str, *, is_default: bool, now_us: int) -> str:
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

    def load_state(self, connection: Connection, account_id: str, owner_id: str) -> AccountState:
        """Latest snapshot plus the events after it: constant cost however long the log.

        After reading: the snapshot and the replayed state must both satisfy the invariants."""
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
            check_state(state)
        tail_query = (
            select(*EVENT_COLUMNS)
            .where(events.c.account_id == account_id, events.c.sequence > state.sequence)
            .order_by(events.c.sequence)
        )
        try:
            for event_row in connection.execute(tail_query).all():
                apply(state, check_event(event_from_row(event_row)))
        except ReplayError as exc:
            raise ReplayError(f"the log of account {account_id} does not replay: {exc}") from exc
        return check_state(state)

    def find_outcomes(
        self, connection: Connection, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Event | Refusal]:
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
                if event is None:
                    raise InvariantViolation(
                        f"event {account_id}:{sequence} vanished inside a write transaction"
                    )
                found[(account_id, key)] = event
                continue
            found[(account_id, key)] = self._refusal(connection, account_id, key)
        return found

    def _refusal(self, connection: Connection, account_id: str, key: str) -> Refusal:
        query = select(commands).where(
            commands.c.account_id == account_id, commands.c.idempotency_key == key
        )
        m = connection.execute(query).one()._mapping
        return Refusal(
            account_id,
            key,
            m["fingerprint"],
            error_from_record(m["error_code"], json.loads(m["error_details_json"])),
            int(m["recorded_at_us"]),
        )

    def event_at(self, connection: Connection, account_id: str, sequence: int) -> Event | None:
        query = select(*EVENT_COLUMNS).where(
            events.c.account_id == account_id, events.c.sequence == sequence
        )
        row = connection.execute(query).one_or_none()
        return None if row is None else check_event(event_from_row(row))

    def refunded_total(self, connection: Connection, account_id: str, event_id: str) -> int:
        query = select(func.coalesce(func.sum(events.c.amount), 0)).where(
            events.c.account_id == account_id,
            events.c.refers_to == event_id,
            events.c.event_type == str(EventType.REFUNDED),
        )
        return int(connection.execute(query).scalar_one())

    def write(self, connection: Connection, batch: BatchWrite) -> None:
        """Commit-ready writes of one batch, one executemany per table touched.

        Plain driver SQL with tuples: SQLAlchemy's per-row parameter processing was the
        largest cost of a batch, and these statements never change.
        """
        check_batch(batch)
        if batch.events:
            connection.exec_driver_sql(
                self._insert_events_sql, [event_tuple(e) for e in batch.events]
            )
        self._write_refusals_and_snapshots(connection, batch)
        write_budget_usage(connection, batch)
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

    def _write_refusals_and_snapshots(self, connection: Connection, batch: BatchWrite) -> None:
        """The rare rows of a batch, through SQLAlchemy (their cost does not matter)."""
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
            rows = (await connection.execute(query)).all()
        return [check_event(event_from_row(row)) for row in rows]

    async def sums_by_type(self, account_id: str | None) -> dict[str, tuple[int, int]]:
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
        query: Select[Any] = (
            select(hold_expiry.c.account_id, hold_expiry.c.hold_id)
            .where(hold_expiry.c.expires_at_us <= now_us)
            .order_by(hold_expiry.c.expires_at_us, hold_expiry.c.hold_id)
            .limit(limit)
        )
        async with self.engines.read.connect() as connection:
            return [(row[0], row[1]) for row in (await connection.execute(query)).all()]

    # -- audit ---------------------------------------------------------------------------

    async def stream_events(self, account_id: str | None) -> AsyncIterator[Event]:
        async with self.engines.read.connect() as connection:
            result = await connection.stream(events_query(account_id))
            async for row in result:
                yield event_from_row(row)

    @contextlib.asynccontextmanager
    async def audit_reads(self, account_id: str | None) -> AsyncIterator[AuditReads]:
        """Every read of one audit in one transaction, so they all see one moment of the
        database however many commits happen meanwhile (SQLite: a deferred BEGIN, i.e. one WAL
        read snapshot; PostgreSQL: REPEATABLE READ READ ONLY, events streamed on the same
        connection). Nothing is written."""
        async with self.engines.read.connect() as connection:
            connection = await self._audit_connection(connection)
            async with connection.begin():
                yield SqlAuditReads(connection, account_id)
