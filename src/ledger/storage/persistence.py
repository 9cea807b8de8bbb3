"""The ledger's persistence contract: what the writer, the application and the audit need from
storage, as an abstract `EventStore`, and the records that cross it.

One implementation per backend (`sqlite.py`, `postgres.py`, sharing SQL in `sql.py`), chosen
by `ledger.storage.store_for`. The writer's methods are synchronous functions of a
`Connection` inside its one write transaction (on PostgreSQL run through
`AsyncConnection.run_sync`, on SQLite in the writer's own thread); reads are async on the read
pool. An implementation checks the money invariants on both sides: before it writes a batch and
after it reads events or state back (`ledger.domain.invariants`), raising `InvariantViolation`.
Driver errors are translated into ledger errors once, in the writer (`is_retryable`).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from ledger.domain import AccountState, Event
from ledger.errors import LedgerError
from ledger.storage.database import Engines


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
    # Budget use: rows of holds placed under budgets, captures (hold id, amount taken) and
    # releases (hold id); written in that order, so a hold placed and resolved in one batch
    # ends as it should.
    budget_holds: list[BudgetHold] = field(default_factory=list)
    budget_captures: list[tuple[str, int]] = field(default_factory=list)
    budget_releases: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BudgetHold:
    """One (hold, budget) pair: the hold's amount counts against the budget while open."""

    hold_id: str
    budget_id: str
    account_id: str
    placed_at_us: int
    amount: int


@dataclass(frozen=True, slots=True)
class MalformedRow:
    """A stored row the audit cannot decode (hand-edited or damaged): reported, then skipped."""

    table: str
    account_id: str | None
    sequence: int | None
    detail: str
    hash: str | None = None


class AuditReads(abc.ABC):
    """The audit's reads, all inside one read transaction (one moment of the database).

    Rows that do not decode come back as `MalformedRow` so one damaged row cannot hide the
    findings of every other account; nothing here checks invariants, that is the audit's job."""

    @abc.abstractmethod
    async def heads(self) -> list[AccountHead | MalformedRow]: ...

    @abc.abstractmethod
    async def snapshots(self) -> list[Snapshot | MalformedRow]: ...

    @abc.abstractmethod
    async def hold_index(self) -> list[tuple[str, tuple[str, int, int]] | MalformedRow]:
        """(hold_id, (account_id, amount, expires_at_us)) of every indexed unresolved hold."""

    @abc.abstractmethod
    async def refusals(self) -> list[tuple[str, str, str]]:
        """(account_id, idempotency_key, error_code) of every recorded refusal."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[Event | MalformedRow]:
        """Every event ordered by account and sequence, fetched in bounded chunks."""


class EventStore(abc.ABC):
    """Storage of accounts, their event logs, refusals, snapshots and the hold-expiry index."""

    backend: str
    engines: Engines

    # -- translating driver errors -------------------------------------------------------

    @abc.abstractmethod
    def is_retryable(self, exc: BaseException) -> bool:
        """Whether a driver error is a conflict that a retry against fresh state may fix."""

    # -- accounts ------------------------------------------------------------------------

    @abc.abstractmethod
    async def default_account(self, owner_id: str) -> str | None: ...

    @abc.abstractmethod
    async def create_account(self, owner_id: str, *, is_default: bool, now_us: int) -> str:
        """Insert an account and its empty snapshot; IntegrityError if a default exists."""

    @abc.abstractmethod
    async def accounts_of(self, owner_id: str) -> list[str]:
        """The owner's account ids, the default first, then by creation."""

    @abc.abstractmethod
    async def account_owner(self, account_id: str) -> str | None: ...

    # -- inside the writer's transaction -------------------------------------------------

    @abc.abstractmethod
    def lock_heads(
        self, connection: Connection, account_ids: Iterable[str]
    ) -> dict[str, AccountHead]:
        """Heads of the accounts that exist, locked against other writers until commit."""

    @abc.abstractmethod
    def load_state(self, connection: Connection, account_id: str, owner_id: str) -> AccountState:
        """The account's state after its last event (snapshot plus tail), invariants checked."""

    @abc.abstractmethod
    def find_outcomes(
        self, connection: Connection, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Event | Refusal]:
        """Earlier outcomes (events or refusals) of these (account_id, idempotency_key) pairs."""

    @abc.abstractmethod
    def event_at(self, connection: Connection, account_id: str, sequence: int) -> Event | None:
        """The account's event number `sequence`, invariants checked; None if there is none."""

    @abc.abstractmethod
    def refunded_total(self, connection: Connection, account_id: str, event_id: str) -> int:
        """What refunds of the event `event_id` gave back so far."""

    @abc.abstractmethod
    def write(self, connection: Connection, batch: BatchWrite) -> None:
        """Write one batch (invariants checked first); the caller commits."""

    # -- reads ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def read_state(self, account_id: str) -> AccountState | None:
        """Current state in one read transaction; None if the account does not exist."""

    @abc.abstractmethod
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

    @abc.abstractmethod
    async def sums_by_type(self, account_id: str | None) -> dict[str, tuple[int, int]]:
        """Per event type: sum(amount), sum(released_amount)."""

    @abc.abstractmethod
    async def expired_holds(self, now_us: int, limit: int) -> list[tuple[str, str]]:
        """(account_id, hold_id) of unresolved holds that expired at or before `now_us`."""

    # -- audit ---------------------------------------------------------------------------

    @abc.abstractmethod
    def stream_events(self, account_id: str | None) -> AsyncIterator[Event]:
        """Every event (of one account, or all) ordered by account and sequence."""

    @abc.abstractmethod
    def audit_reads(
        self, account_id: str | None
    ) -> contextlib.AbstractAsyncContextManager[AuditReads]:
        """Every read of one audit in one read-only transaction (one moment of the database)."""
