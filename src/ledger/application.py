"""The ledger's application service: `Ledger`, the one object the rest of ledgerchat uses.

`await Ledger.open(url)` upgrades the schema, starts the per-process writer (group commit) and,
unless disabled, a background sweeper of expired holds. Commands validate their inputs here,
then go through the writer; reads go straight to the read pool. A refused command writes no
ledger event: the refusal is stored under its idempotency key so a retry gets it back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType

import structlog
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from ledger.audit import AuditReport, run_audit
from ledger.clock import Clock, system_clock
from ledger.domain import (
    AddCredits,
    CaptureHold,
    Charge,
    Command,
    EventType,
    PlaceHold,
    Refund,
    ReleaseHold,
    ReleaseReason,
    check_amount,
    check_key,
    check_metadata,
    check_storable,
    check_text,
    parse_sequence,
    to_us,
)
from ledger.errors import (
    AccountNotFound,
    HoldAlreadyResolved,
    HoldNotFound,
    InvalidArgument,
    LedgerError,
    StorageError,
)
from ledger.models import Balance, HistoryEntry, HistoryPage, HoldReceipt, Receipt, Totals
from ledger.settings import LedgerSettings, default_database_url
from ledger.storage.database import (
    Engines,
    create_audit_engines,
    create_engines,
    schema_is_current,
    schema_problem,
    upgrade_schema,
)
from ledger.storage.store import EventStore, store_for
from ledger.writer import Writer

logger = structlog.get_logger("ledger")

SWEEP_KEY_PREFIX = "ledger-sweep:"


def _lookup_id(account_id: str) -> str:
    """An account id to look up: any string the database can hold (an unknown one is
    AccountNotFound, as before); NUL or a lone surrogate is InvalidArgument on both backends
    instead of a driver error on one."""
    if not isinstance(account_id, str):
        raise InvalidArgument("account_id must be a string")
    return check_storable("account_id", account_id)


class Ledger:
    """Event-sourced credit ledger over SQLite or PostgreSQL. Use `await Ledger.open(...)`."""

    def __init__(
        self, engines: Engines, store: EventStore, settings: LedgerSettings, clock: Clock
    ) -> None:
        self._engines = engines
        self._store = store
        self._settings = settings
        self._clock = clock
        self._writer = Writer(store, settings, clock)
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        database_url: str | None = None,
        *,
        settings: LedgerSettings | None = None,
        clock: Clock | None = None,
        run_sweeper: bool = True,
    ) -> Ledger:
        """Upgrade the schema and start the writer (and the sweeper if its interval > 0)."""
        settings = settings or LedgerSettings.from_env()
        engines = create_engines(database_url or default_database_url(), settings)
        try:
            await upgrade_schema(engines)
        except LedgerError:
            await engines.dispose()
            raise
        except Exception as exc:
            await engines.dispose()
            raise StorageError(f"cannot open the ledger database: {exc}") from exc
        ledger = cls(engines, store_for(engines), settings, clock or system_clock)
        ledger._writer.start()
        if run_sweeper and settings.sweep_interval_s > 0:
            ledger._sweeper = asyncio.create_task(ledger._sweep_forever(), name="ledger-sweeper")
        return ledger

    @property
    def settings(self) -> LedgerSettings:
        return self._settings

    @property
    def backend(self) -> str:
        return self._engines.backend

    @property
    def store(self) -> EventStore:
        return self._store

    async def schema_is_current(self) -> bool:
        """Whether the database holds the newest ledger migration (another process may have
        opened it with older code, or a newer one may have upgraded it)."""
        return await schema_is_current(self._engines)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self._writer.close()
        await self._engines.dispose()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- accounts ------------------------------------------------------------------------

    async def open_account(self, owner_id: str) -> str:
        """The owner's default account id, created on first call (idempotent per owner)."""
        check_text("owner_id", owner_id, required=True)
        existing = await self._store.default_account(owner_id)
        if existing is not None:
            return existing
        try:
            return await self._store.create_account(
                owner_id, is_default=True, now_us=to_us(self._clock())
            )
        except IntegrityError:
            # Another caller or process created it first: theirs is the default.
            existing = await self._store.default_account(owner_id)
            if existing is None:
                raise StorageError(f"could not create an account for {owner_id!r}") from None
            return existing

    async def create_account(self, owner_id: str) -> str:
        """An additional (non-default) account for the owner, e.g. one per API key."""
        check_text("owner_id", owner_id, required=True)
        await self.open_account(owner_id)
        return await self._store.create_account(
            owner_id, is_default=False, now_us=to_us(self._clock())
        )

    async def accounts_of(self, owner_id: str) -> list[str]:
        """Account ids of the owner, the default account first."""
        check_text("owner_id", owner_id, required=True)
        return await self._store.accounts_of(owner_id)

    # -- commands ------------------------------------------------------------------------

    def _amount(self, amount: object, *, allow_zero: bool = False) -> int:
        return check_amount(amount, max_amount=self._settings.max_amount, allow_zero=allow_zero)

    async def _submit(self, command: Command) -> Receipt:
        outcome = await self._writer.submit(command)
        return Receipt.from_event(outcome.event, replayed=outcome.replayed)

    async def add_credits(
        self,
        account_id: str,
        amount: int,
        *,
        source: str,
        note: str = "",
        idempotency_key: str,
        metadata: Mapping[str, str | int] | None = None,
    ) -> Receipt:
        """Top-up, signup grant or admin grant."""
        command = AddCredits(
            account_id=check_text("account_id", account_id, required=True),
            idempotency_key=check_key(idempotency_key),
            amount=self._amount(amount),
            source=check_text("source", source, required=True),
            note=check_text("note", note),
            metadata=check_metadata(metadata),
        )
        return await self._submit(command)

    async def place_hold(
        self,
        account_id: str,
        amount: int,
        *,
        ttl_s: float | None = None,
        expires_at: datetime | None = None,
        purpose: str,
        reference: str,
        idempotency_key: str,
        metadata: Mapping[str, str | int] | None = None,
    ) -> HoldReceipt:
        """Reserve credits until captured, released or expired (ttl_s or expires_at, not both)."""
        if ttl_s is not None and expires_at is not None:
            raise InvalidArgument("give ttl_s or expires_at, not both")
        if ttl_s is not None and (
            isinstance(ttl_s, bool)
            or not isinstance(ttl_s, int | float)
            or not 0 < ttl_s <= self._settings.hold_ttl_max_s
        ):
            # Also refuses NaN and infinity. Independent of the clock, so not recorded.
            raise InvalidArgument(
                f"ttl_s must be a number of seconds above 0 and at most "
                f"{self._settings.hold_ttl_max_s} (hold_ttl_max_s)"
            )
        command = PlaceHold(
            account_id=check_text("account_id", account_id, required=True),
            idempotency_key=check_key(idempotency_key),
            amount=self._amount(amount),
            purpose=check_text("purpose", purpose, required=True),
            reference=check_text("reference", reference),
            ttl_s=None if ttl_s is None else float(ttl_s),
            expires_at_us=None if expires_at is None else to_us(expires_at),
            metadata=check_metadata(metadata),
        )
        outcome = await self._writer.submit(command)
        return HoldReceipt.from_event(outcome.event, replayed=outcome.replayed)

    async def capture_hold(
        self,
        account_id: str,
        hold_id: str,
        amount: int,
        *,
        idempotency_key: str,
        metadata: Mapping[str, str | int] | None = None,
    ) -> Receipt:
        """Take `amount` (0 allowed) of the hold; the remainder is released in the same event."""
        command = CaptureHold(
            account_id=check_text("account_id", account_id, required=True),
            idempotency_key=check_key(idempotency_key),
            hold_id=check_text("hold_id", hold_id, required=True),
            amount=self._amount(amount, allow_zero=True),
            metadata=check_metadata(metadata),
        )
        return await self._submit(command)

    async def release_hold(
        self, account_id: str, hold_id: str, *, reason: str, idempotency_key: str
    ) -> Receipt:
        """Give the whole hold back; reason is aborted, failed, timeout, expired or cancelled."""
        try:
            release_reason = ReleaseReason(reason)
        except ValueError:
            choices = ", ".join(r.value for r in ReleaseReason)
            raise InvalidArgument(f"reason must be one of {choices}, got {reason!r}") from None
        command = ReleaseHold(
            account_id=check_text("account_id", account_id, required=True),
            idempotency_key=check_key(idempotency_key),
            hold_id=check_text("hold_id", hold_id, required=True),
            reason=release_reason,
        )
        return await self._submit(command)

    async def charge(
        self,
        account_id: str,
        amount: int,
        *,
        idempotency_key: str,
        metadata: Mapping[str, str | int] | None = None,
    ) -> Receipt:
        """Take credits directly, without a hold."""
        command = Charge(
            account_id=check_text("account_id", account_id, required=True),
            idempotency_key=check_key(idempotency_key),
            amount=self._amount(amount),
            metadata=check_metadata(metadata),
        )
        return await self._submit(command)

    async def refund(
        self,
        account_id: str,
        event_id: str,
        amount: int,
        *,
        reason: str,
        idempotency_key: str,
        metadata: Mapping[str, str | int] | None = None,
    ) -> Receipt:
        """Give back part or all of a charge or capture (never more than it took)."""
        command = Refund(
            account_id=check_text("account_id", account_id, required=True),
            idempotency_key=check_key(idempotency_key),
            event_id=check_text("event_id", event_id, required=True),
            amount=self._amount(amount),
            reason=check_text("reason", reason, required=True),
            metadata=check_metadata(metadata),
        )
        return await self._submit(command)

    # -- reads ---------------------------------------------------------------------------

    async def balance(self, account_id: str) -> Balance:
        """Latest snapshot plus the events after it (at most snapshot_every - 1)."""
        state = await self._store.read_state(_lookup_id(account_id))
        if state is None:
            raise AccountNotFound(account_id)
        assert state.available >= 0, f"stored state of {account_id} has negative available"
        return Balance.of(state.posted, state.held)

    async def history(
        self,
        account_id: str,
        *,
        cursor: str | None = None,
        limit: int | None = None,
        types: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> HistoryPage:
        """One page of the account's events, newest first; `since` inclusive, `until` not."""
        page_max = self._settings.history_page_max
        limit = self._settings.history_page_default if limit is None else limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= page_max:
            raise InvalidArgument(f"limit must be an integer from 1 to {page_max}")
        before: int | None = None
        if cursor is not None:
            # A cursor is the sequence number a page's next_cursor gave, as the ledger wrote it.
            before = parse_sequence(cursor) if isinstance(cursor, str) else None
            if before is None:
                raise InvalidArgument(f"malformed history cursor {str(cursor)[:40]!r}")
        if types is not None:
            known = {t.value for t in EventType}
            unknown = [t for t in types if t not in known]
            if unknown:
                raise InvalidArgument(f"unknown event types {unknown}; known: {sorted(known)}")
        if await self._store.account_owner(_lookup_id(account_id)) is None:
            raise AccountNotFound(account_id)
        events = await self._store.history(
            account_id,
            before_sequence=before,
            limit=limit + 1,
            types=types,
            since_us=None if since is None else to_us(since),
            until_us=None if until is None else to_us(until),
        )
        more = len(events) > limit
        events = events[:limit]
        next_cursor = str(events[-1].sequence) if more and events else None
        return HistoryPage([HistoryEntry.from_event(e) for e in events], next_cursor)

    async def totals(self, account_id: str | None = None) -> Totals:
        """Issued, captured, charged, refunded, released and outstanding holds."""
        if (
            account_id is not None
            and await self._store.account_owner(_lookup_id(account_id)) is None
        ):
            raise AccountNotFound(account_id)
        return Totals.from_sums(await self._store.sums_by_type(account_id))

    async def sweep_expired_holds(self, now: datetime | None = None) -> int:
        """Release holds expired at `now` (default: the clock); returns how many this call did.

        Safe in several processes at once: each release goes through the writer with the key
        `ledger-sweep:<hold id>`, so a hold another sweeper released is a replay, not a second
        release, and a hold resolved meanwhile is refused without a record.
        """
        now_us = to_us(now or self._clock())
        candidates = await self._store.expired_holds(now_us, self._settings.sweep_batch_size)
        commands = [
            ReleaseHold(
                account_id=account_id,
                idempotency_key=SWEEP_KEY_PREFIX + hold_id,
                hold_id=hold_id,
                reason=ReleaseReason.EXPIRED,
            )
            for account_id, hold_id in candidates
        ]
        results = await asyncio.gather(
            *(self._writer.submit(c, record_refusal=False) for c in commands),
            return_exceptions=True,
        )
        released = 0
        for result in results:
            if isinstance(result, HoldAlreadyResolved | HoldNotFound):
                continue
            if isinstance(result, BaseException):
                raise result
            if not result.replayed:
                released += 1
        return released

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval_s)
            try:
                released = await self.sweep_expired_holds()
            except LedgerError as exc:
                logger.warning("ledger_sweep_failed", error=str(exc))
                continue
            if released:
                logger.info("ledger_sweep", released=released)

    async def audit(self, account_id: str | None = None) -> AuditReport:
        """Replay the log(s) and report violations and totals (see ledger.audit).

        All reads happen in one read transaction, so an audit while commands commit sees one
        consistent moment of the database."""
        return await run_audit(
            self._store,
            account_id=None if account_id is None else _lookup_id(account_id),
            now_us=to_us(self._clock()),
            grace_s=self._settings.audit_expired_hold_grace_s,
        )


async def audit_database(
    database_url: str,
    *,
    account_id: str | None = None,
    settings: LedgerSettings | None = None,
    clock: Clock | None = None,
) -> AuditReport:
    """Audit a database without opening a `Ledger`: read only, no schema upgrade, no writer.

    For `ledgerchat audit`, which may be pointed at the wrong file or an empty database and
    must leave it exactly as it was (an SQLite file keeps its journal mode). A database without
    the ledger schema at its newest revision is a StorageError saying which."""
    settings = settings or LedgerSettings.from_env()
    engines = create_audit_engines(database_url, settings)
    try:
        try:
            problem = await schema_problem(engines)
        except SQLAlchemyError as exc:
            detail = str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)
            first_line = (detail.strip().splitlines() or [type(exc).__name__])[0]
            raise StorageError(f"cannot read the database: {first_line}") from exc
        if problem is not None:
            raise StorageError(problem)
        return await run_audit(
            store_for(engines),
            account_id=None if account_id is None else _lookup_id(account_id),
            now_us=to_us((clock or system_clock)()),
            grace_s=settings.audit_expired_hold_grace_s,
        )
    finally:
        await engines.dispose()
