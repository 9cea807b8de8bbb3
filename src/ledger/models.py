"""What the ledger hands back: receipts, balances, history pages and totals (plain dataclasses).

These are the ledger's public read shapes; the web layer converts them to its wire schemas.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Self

from ledger.domain import Event, EventType, Metadata, from_us
from ledger.errors import InvariantViolation


@dataclass(frozen=True, slots=True)
class Balance:
    """posted = credits in the account; held = reserved by active holds; available = the rest."""

    posted: int
    held: int
    available: int

    @classmethod
    def of(cls, posted: int, held: int) -> Balance:
        return cls(posted=posted, held=held, available=posted - held)


@dataclass(frozen=True, slots=True)
class Receipt:
    """The committed effect of a command (or, with replayed=True, of its first attempt)."""

    event_id: str
    account_id: str
    sequence: int
    event_type: str
    amount: int
    released_amount: int
    hold_id: str | None
    expires_at: datetime | None
    balance: Balance
    recorded_at: datetime
    replayed: bool

    @classmethod
    def from_event(cls, event: Event, *, replayed: bool) -> Self:
        return cls(
            event_id=event.event_id,
            account_id=event.account_id,
            sequence=event.sequence,
            event_type=str(event.event_type),
            amount=event.amount,
            released_amount=event.released_amount,
            hold_id=event.hold_id,
            expires_at=None if event.expires_at_us is None else from_us(event.expires_at_us),
            balance=Balance.of(event.posted_after, event.held_after),
            recorded_at=from_us(event.recorded_at_us),
            replayed=replayed,
        )


@dataclass(frozen=True, slots=True)
class HoldReceipt(Receipt):
    """Receipt of place_hold: `hold_id` and `expires_at` are always set."""

    @property
    def hold(self) -> str:
        if self.hold_id is None:
            raise InvariantViolation(f"the receipt of hold event {self.event_id} has no hold id")
        return self.hold_id


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    event_id: str
    sequence: int
    event_type: str
    amount: int
    released_amount: int
    time: datetime
    posted_after: int
    held_after: int
    available_after: int
    hold_id: str | None
    refers_to: str | None
    purpose: str | None
    reference: str | None
    reason: str | None
    source: str | None
    note: str | None
    expires_at: datetime | None
    metadata: Metadata

    @classmethod
    def from_event(cls, event: Event) -> HistoryEntry:
        return cls(
            event_id=event.event_id,
            sequence=event.sequence,
            event_type=str(event.event_type),
            amount=event.amount,
            released_amount=event.released_amount,
            time=from_us(event.recorded_at_us),
            posted_after=event.posted_after,
            held_after=event.held_after,
            available_after=event.posted_after - event.held_after,
            hold_id=event.hold_id,
            refers_to=event.refers_to,
            purpose=event.purpose,
            reference=event.reference,
            reason=event.reason,
            source=event.source,
            note=event.note,
            expires_at=None if event.expires_at_us is None else from_us(event.expires_at_us),
            metadata=dict(event.metadata),
        )


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Newest first. Pass `next_cursor` back to get older entries; None means no more."""

    entries: list[HistoryEntry]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over the log. Conservation: posted = issued - captured - charged + refunded."""

    issued: int
    captured: int
    charged: int
    refunded: int
    released: int
    outstanding_holds: int

    @property
    def posted(self) -> int:
        return self.issued - self.captured - self.charged + self.refunded

    @property
    def available(self) -> int:
        return self.posted - self.outstanding_holds

    @classmethod
    def from_sums(cls, sums: dict[str, tuple[int, int]]) -> Totals:
        def amount(kind: EventType) -> int:
            return sums.get(str(kind), (0, 0))[0]

        placed = amount(EventType.HOLD_PLACED)
        captured = amount(EventType.HOLD_CAPTURED)
        released = (
            amount(EventType.HOLD_RELEASED) + sums.get(str(EventType.HOLD_CAPTURED), (0, 0))[1]
        )
        return cls(
            issued=amount(EventType.CREDITS_ADDED),
            captured=captured,
            charged=amount(EventType.CHARGED),
            refunded=amount(EventType.REFUNDED),
            released=released,
            outstanding_holds=placed - captured - released,
        )


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """A budget's use in its current period; `resets_at` is None for a lifetime budget,
    `limit` and `left` None for a scope that is only recorded."""

    budget_id: str
    limit: int | None
    period: str
    used: int
    left: int | None
    period_start: datetime
    resets_at: datetime | None
