"""Replay and completion: how an event changes an account's state.

`apply` folds one stored event into a state (replay rebuilds state, checks snapshots and lets
the audit recompute balances) and raises `ReplayError` when the log is inconsistent;
`complete` numbers, balances and hashes a decided draft into the account's next event, folds it
in and checks the invariants before the event goes to storage. Pure code, no I/O.
"""

from __future__ import annotations

from typing import Any

from ledger.domain.events import (
    AccountState,
    Event,
    EventDraft,
    EventType,
    Hold,
    event_id_of,
    hash_of,
)
from ledger.domain.invariants import check_state
from ledger.errors import InvariantViolation


class ReplayError(InvariantViolation):
    """An event cannot follow the state it is applied to (only a corrupted log does this)."""


def apply(state: AccountState, event: Event) -> None:
    """Fold one event into the state; raises ReplayError if the log is inconsistent."""
    if event.sequence != state.sequence + 1:
        raise ReplayError(f"sequence {event.sequence} follows {state.sequence}")
    kind = event.event_type
    if kind is EventType.CREDITS_ADDED:
        state.posted += event.amount
    elif kind is EventType.HOLD_PLACED:
        if event.hold_id is None or event.expires_at_us is None:
            raise ReplayError(f"event {event.event_id} places a hold without id or expiry")
        state.holds[event.hold_id] = Hold(event.hold_id, event.amount, event.expires_at_us)
        state.held += event.amount
    elif kind in (EventType.HOLD_CAPTURED, EventType.HOLD_RELEASED):
        hold = state.holds.pop(event.hold_id or "", None)
        if hold is None:
            raise ReplayError(f"event {event.event_id} resolves unknown hold {event.hold_id}")
        if event.amount + event.released_amount != hold.amount:
            raise ReplayError(f"event {event.event_id} resolves {hold.amount} wrongly")
        state.held -= hold.amount
        if kind is EventType.HOLD_CAPTURED:
            state.posted -= event.amount
    elif kind is EventType.CHARGED:
        state.posted -= event.amount
    elif kind is EventType.REFUNDED:
        state.posted += event.amount
    state.sequence = event.sequence
    state.head_hash = event.hash


def complete(
    state: AccountState,
    draft: EventDraft,
    *,
    idempotency_key: str,
    fingerprint: str,
    recorded_at_us: int,
) -> Event:
    """Turn a decided draft into the next event of the account and fold it into `state`."""
    posted, held = state.posted, state.held
    if draft.event_type is EventType.CREDITS_ADDED or draft.event_type is EventType.REFUNDED:
        posted += draft.amount
    elif draft.event_type is EventType.CHARGED:
        posted -= draft.amount
    elif draft.event_type is EventType.HOLD_PLACED:
        held += draft.amount
    elif draft.event_type is EventType.HOLD_CAPTURED:
        posted -= draft.amount
        held -= draft.amount + draft.released_amount
    elif draft.event_type is EventType.HOLD_RELEASED:
        held -= draft.amount
    hold_id = draft.hold_id
    if draft.event_type is EventType.HOLD_PLACED:
        hold_id = event_id_of(state.account_id, state.sequence + 1)
    values: dict[str, Any] = {
        "account_id": state.account_id,
        "sequence": state.sequence + 1,
        "event_type": draft.event_type,
        "amount": draft.amount,
        "released_amount": draft.released_amount,
        "hold_id": hold_id,
        "refers_to": draft.refers_to,
        "expires_at_us": draft.expires_at_us,
        "purpose": draft.purpose,
        "reference": draft.reference,
        "reason": draft.reason,
        "source": draft.source,
        "note": draft.note,
        "posted_after": posted,
        "held_after": held,
        "idempotency_key": idempotency_key,
        "fingerprint": fingerprint,
        "recorded_at_us": recorded_at_us,
        "metadata": draft.metadata,
        "prev_hash": state.head_hash,
    }
    event = Event(**values, hash=hash_of(values))
    apply(state, event)
    # Before storage: rules that let an event leave available negative are a bug, not a refusal.
    check_state(state)
    return event
