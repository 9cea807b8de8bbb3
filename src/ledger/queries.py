"""The ledger's queries: balances, history pages, totals and audits (nothing here writes).

`LedgerQueries` is the read half of `ledger.Ledger`: each query checks its inputs, then reads
straight from the read pool through the store (which checks the invariants of what it reads
back). `audit_database` audits a database without opening a `Ledger` at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ledger.audit import AuditReport, Violation, run_audit
from ledger.clock import Clock, system_clock
from ledger.domain import (
    Budget,
    EventType,
    check_budgets,
    check_storable,
    from_us,
    parse_sequence,
    to_us,
)
from ledger.errors import AccountNotFound, InvalidArgument, StorageError
from ledger.models import Balance, BudgetUse, HistoryEntry, HistoryPage, Totals
from ledger.proofs import CheckpointProblem, check_stored_checkpoints
from ledger.settings import LedgerSettings
from ledger.storage import EventStore, store_for
from ledger.storage.budget_usage import budget_used_now
from ledger.storage.database import create_audit_engines, schema_problem


def lookup_id(account_id: str) -> str:
    """An account id to look up: any string the database can hold (an unknown one is
    AccountNotFound, as before); NUL or a lone surrogate is InvalidArgument on both backends
    instead of a driver error on one."""
    if not isinstance(account_id, str):
        raise InvalidArgument("account_id must be a string")
    return check_storable("account_id", account_id)


class LedgerQueries:
    """The ledger's reads; `Ledger` sets the store, settings and clock they use."""

    _store: EventStore
    _settings: LedgerSettings
    _clock: Clock

    async def balance(self, account_id: str) -> Balance:
        """Latest snapshot plus the events after it (at most snapshot_every - 1)."""
        state = await self._store.read_state(lookup_id(account_id))
        if state is None:
            raise AccountNotFound(account_id)
        # The store checked the state's invariants after reading it (InvariantViolation).
        return Balance.of(state.posted, state.held)

    async def open_holds(self, account_id: str) -> dict[str, int]:
        """The account's unresolved holds: hold id -> credits held (the same snapshot plus
        events `balance` reads)."""
        state = await self._store.read_state(lookup_id(account_id))
        if state is None:
            raise AccountNotFound(account_id)
        return {hold_id: hold.amount for hold_id, hold in state.holds.items()}

    async def budget_use(self, account_id: str, budget: Budget) -> BudgetUse:
        """How much of `budget` the account's holds hold or took in its current period (a
        read for display and planning; the hold itself is checked by the writer)."""
        (budget,) = check_budgets([budget], max_amount=self._settings.max_amount)
        now_us = to_us(self._clock())
        start_us, end_us = budget.window_us(now_us)
        used = await budget_used_now(
            self._store.engines.read, lookup_id(account_id), budget.budget_id, start_us, end_us
        )
        return BudgetUse(
            budget_id=budget.budget_id,
            limit=budget.limit,
            period=budget.period,
            used=used,
            left=None if budget.limit is None else max(budget.limit - used, 0),
            period_start=from_us(start_us),
            resets_at=None if end_us is None else from_us(end_us),
        )

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
        if await self._store.account_owner(lookup_id(account_id)) is None:
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
            and await self._store.account_owner(lookup_id(account_id)) is None
        ):
            raise AccountNotFound(account_id)
        return Totals.from_sums(await self._store.sums_by_type(account_id))

    async def audit(
        self, account_id: str | None = None, *, public_key: Ed25519PublicKey | None = None
    ) -> AuditReport:
        """Replay the log(s) and report violations and totals (see ledger.audit), and check
        the stored checkpoints: each head hash against the chain, and with `public_key` each
        signature too.

        All reads happen in one read transaction, so an audit while commands commit sees one
        consistent moment of the database."""
        report = await run_audit(
            self._store,
            account_id=None if account_id is None else lookup_id(account_id),
            now_us=to_us(self._clock()),
            grace_s=self._settings.audit_expired_hold_grace_s,
        )
        for problem in await check_stored_checkpoints(self._store.engines, public_key, account_id):
            report.violations.append(checkpoint_violation(problem))
        return report


async def audit_database(
    database_url: str,
    *,
    account_id: str | None = None,
    settings: LedgerSettings | None = None,
    clock: Clock | None = None,
    public_key: Ed25519PublicKey | None = None,
) -> AuditReport:
    """Audit a database without opening a `Ledger`: read only, no schema upgrade, no writer.

    For `ledgerchat audit`, which may be pointed at the wrong file or an empty database and
    must leave it exactly as it was (an SQLite file keeps its journal mode). A database without
    the ledger schema at its newest revision is a StorageError saying which. The stored
    checkpoints are checked too: their signatures with `public_key` when given."""
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
        report = await run_audit(
            store_for(engines),
            account_id=None if account_id is None else lookup_id(account_id),
            now_us=to_us((clock or system_clock)()),
            grace_s=settings.audit_expired_hold_grace_s,
        )
        # The signed heads: each signature by the service's key (when given) and each head
        # hash equal to the chain's hash at that sequence.
        for checkpoint in await check_stored_checkpoints(engines, public_key, account_id):
            report.violations.append(checkpoint_violation(checkpoint))
        return report
    finally:
        await engines.dispose()


def checkpoint_violation(problem: CheckpointProblem) -> Violation:
    """A stored checkpoint's problem as an audit violation of kind `checkpoint`."""
    return Violation("checkpoint", problem.account_id, problem.sequence, problem.detail)
