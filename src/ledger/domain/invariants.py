"""The money invariants of events and account state, checked on both sides of storage.

Every event and every state must satisfy them whatever the command: amounts are not negative,
held is the sum of the active holds, available = posted - held is never negative, and an event
names what its type needs (a hold id, a refunded event). The writer checks an event before it
is written and the store checks what it reads back, so a hand-edited or damaged row is a typed
`InvariantViolation` rather than a wrong balance. Raised, never asserted: `python -O` strips
asserts. Pure code, no I/O.
"""

from __future__ import annotations

from ledger.domain.events import AccountState, Event, EventType
from ledger.errors import InvariantViolation

_NEEDS_HOLD = (EventType.HOLD_PLACED, EventType.HOLD_CAPTURED, EventType.HOLD_RELEASED)


def check_event(event: Event) -> Event:
    """`event` unless one of its own fields breaks an invariant."""
    where = f"event {event.account_id}:{event.sequence}"
    if event.sequence < 1:
        raise InvariantViolation(f"{where}: sequence {event.sequence} is below 1")
    if event.amount < 0 or event.released_amount < 0:
        raise InvariantViolation(
            f"{where}: negative amount {event.amount} or released {event.released_amount}"
        )
    if event.held_after < 0 or event.posted_after < event.held_after:
        raise InvariantViolation(
            f"{where}: posted {event.posted_after} and held {event.held_after} after it "
            "leave a negative hold or available"
        )
    if event.event_type in _NEEDS_HOLD and event.hold_id is None:
        raise InvariantViolation(f"{where}: a {event.event_type} event without a hold id")
    if event.event_type is EventType.HOLD_PLACED and event.expires_at_us is None:
        raise InvariantViolation(f"{where}: a hold_placed event without an expiry")
    if event.event_type is EventType.REFUNDED and event.refers_to is None:
        raise InvariantViolation(f"{where}: a refunded event that refers to nothing")
    return event


def check_state(state: AccountState) -> AccountState:
    """`state` unless its balances break an invariant (cost: one pass over the active holds)."""
    where = f"account {state.account_id} at sequence {state.sequence}"
    if state.held < 0 or state.available < 0:
        raise InvariantViolation(
            f"{where}: posted {state.posted}, held {state.held}: negative hold or available"
        )
    active = sum(hold.amount for hold in state.holds.values())
    if active != state.held:
        raise InvariantViolation(f"{where}: held {state.held} but its holds sum to {active}")
    return state


def hold_id_of(event: Event) -> str:
    """The hold id of a hold event (`check_event` guarantees one)."""
    if event.hold_id is None:
        raise InvariantViolation(f"event {event.event_id}: a {event.event_type} without hold id")
    return event.hold_id


def refers_to_of(event: Event) -> str:
    """The refunded event's id of a refund (`check_event` guarantees one)."""
    if event.refers_to is None:
        raise InvariantViolation(f"event {event.event_id}: a refund that refers to nothing")
    return event.refers_to
