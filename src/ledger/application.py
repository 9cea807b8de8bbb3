"""The ledger's application service: `Ledger`, the one object the rest of ledgerchat uses.

This module owns its life cycle and its commands. `await Ledger.open(url)` upgrades the schema,
starts the per-process writer (group commit) and, unless disabled, a background sweeper of
expired holds. Commands (add, hold, capture, release, charge, refund, sweep) validate their
inputs here, then go through the writer; the reads come from `ledger.queries.LedgerQueries`.
A refused command writes no ledger event: the refusal is stored under its idempotency key so a
retry gets it back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType

import structlog
from sqlalchemy.exc import IntegrityError

from ledger.clock import Clock, system_clock
from ledger.domain import (
    AddCredits,
    Budget,
    CaptureHold,
    Charge,
    Command,
    PlaceHold,
    Refund,
    ReleaseHold,
    ReleaseReason,
    check_amount,
    check_budgets,
    check_key,
    check_metadata,
    check_text,
    to_us,
)
from ledger.errors import (
    HoldAlreadyResolved,
    HoldNotFound,
    InvalidArgument,
    LedgerError,
    StorageError,
)
from ledger.models import HoldReceipt, Receipt
from ledger.proofs import LedgerProofs
from ledger.queries import LedgerQueries
from ledger.settings import LedgerSettings, default_database_url
from ledger.storage import EventStore, store_for
from ledger.storage.database import (
    Engines,
    create_engines,
    schema_is_current,
    upgrade_schema,
)
from ledger.writer import Writer

logger = structlog.get_logger("ledger")

SWEEP_KEY_PREFIX = "ledger-sweep:"


class Ledger(LedgerQueries, LedgerProofs):
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
        budgets: Sequence[Budget] | None = None,
    ) -> HoldReceipt:
        """Reserve credits until captured, released or expired (ttl_s or expires_at, not both).

        Each of `budgets` is checked in the same transaction as the balance: the hold is
        refused with BudgetExceeded when what the budget's holds hold and took in its current
        period, plus this amount, would pass its limit."""
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
            budgets=check_budgets(budgets, max_amount=self._settings.max_amount),
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
        """Give the whole hold back; reason is one of `ReleaseReason` (aborted, failed, timeout,
        expired, cancelled, engine_unavailable, engine_timeout, engine_error)."""
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
