"""The ledger's rules: `decide` whether an account may do what a command asks.

`decide` takes a command, the account's current state and what the writer looked up for it
(was a hold ever placed, what a refunded event took) and returns the `EventDraft` to write, or
raises a typed refusal (`InsufficientCredits`, `HoldAlreadyResolved`, ...). One small function
per command, each a list of named checks. Pure code, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ledger.domain.budgets import budget_ids
from ledger.domain.commands import (
    AddCredits,
    CaptureHold,
    Charge,
    Command,
    PlaceHold,
    Refund,
    ReleaseHold,
)
from ledger.domain.events import AccountState, EventDraft, EventType, Hold, from_us
from ledger.errors import (
    BudgetExceeded,
    CaptureExceedsHold,
    HoldAlreadyResolved,
    HoldExpired,
    HoldExpiryOutOfRange,
    HoldNotFound,
    InsufficientCredits,
    InvalidAmount,
    RefundExceedsTaken,
    RefundTargetInvalid,
    TooManyActiveHolds,
)


@dataclass(frozen=True, slots=True)
class RefundTarget:
    """What a refund needs to know about the event it refers to."""

    event_id: str
    event_type: EventType
    taken: int
    refunded: int


@dataclass(slots=True)
class Limits:
    max_amount: int
    max_balance: int
    max_active_holds: int
    hold_ttl_default_s: float
    hold_ttl_max_s: float


@dataclass(frozen=True, slots=True)
class _Context:
    """Everything a rule may consult besides the state and the command."""

    now_us: int
    limits: Limits
    hold_was_placed: bool
    refund_target: RefundTarget | None
    # Use of each budget of a PlaceHold within its current period, before this hold.
    budget_used: Mapping[tuple[str, str], int]


def _require_available(state: AccountState, amount: int) -> None:
    if state.available < amount:
        raise InsufficientCredits(state.posted, state.available, amount)


def _require_budgets(command: PlaceHold, context: _Context) -> None:
    for budget in command.budgets:
        if budget.limit is None:
            continue
        used = context.budget_used.get((budget.budget_id, budget.period), 0)
        if used + command.amount > budget.limit:
            _, end_us = budget.window_us(context.now_us)
            resets_at = None if end_us is None else from_us(end_us).isoformat()
            raise BudgetExceeded(
                budget.budget_id, budget.period, budget.limit, used, command.amount, resets_at
            )


def _require_balance_room(state: AccountState, amount: int, limits: Limits) -> None:
    if state.posted + amount > limits.max_balance:
        raise InvalidAmount(amount, f"balance would exceed {limits.max_balance}")


def _active_hold(state: AccountState, hold_id: str, resolved_before: bool) -> Hold:
    hold = state.holds.get(hold_id)
    if hold is not None:
        return hold
    if resolved_before:
        raise HoldAlreadyResolved(hold_id)
    raise HoldNotFound(hold_id)


def _add_credits(state: AccountState, command: AddCredits, context: _Context) -> EventDraft:
    _require_balance_room(state, command.amount, context.limits)
    return EventDraft(
        EventType.CREDITS_ADDED,
        command.amount,
        source=command.source,
        note=command.note,
        metadata=command.metadata,
    )


def _place_hold(state: AccountState, command: PlaceHold, context: _Context) -> EventDraft:
    limits, now_us = context.limits, context.now_us
    if len(state.holds) >= limits.max_active_holds:
        raise TooManyActiveHolds(state.account_id, limits.max_active_holds)
    _require_available(state, command.amount)
    _require_budgets(command, context)
    if command.expires_at_us is not None:
        expires_at_us = command.expires_at_us
    else:
        ttl_s = limits.hold_ttl_default_s if command.ttl_s is None else command.ttl_s
        expires_at_us = now_us + round(ttl_s * 1_000_000)
    if not now_us < expires_at_us <= now_us + round(limits.hold_ttl_max_s * 1_000_000):
        # Depends on the clock, so recorded: a retry must not succeed later.
        raise HoldExpiryOutOfRange(from_us(expires_at_us).isoformat(), limits.hold_ttl_max_s)
    return EventDraft(
        EventType.HOLD_PLACED,
        command.amount,
        expires_at_us=expires_at_us,
        purpose=command.purpose,
        reference=command.reference,
        metadata=_with_budget_ids(command),
    )


def _with_budget_ids(command: PlaceHold) -> dict[str, str | int]:
    """The hold's metadata plus the ids of its budgets (hashed with the event, so an audit can
    rebuild every budget's use from the log)."""
    if not command.budgets:
        return command.metadata
    return {**command.metadata, "budgets": " ".join(budget_ids(command.budgets))}


def _capture_hold(state: AccountState, command: CaptureHold, context: _Context) -> EventDraft:
    hold = _active_hold(state, command.hold_id, context.hold_was_placed)
    if context.now_us >= hold.expires_at_us:
        raise HoldExpired(hold.hold_id, from_us(hold.expires_at_us).isoformat())
    if command.amount > hold.amount:
        raise CaptureExceedsHold(hold.hold_id, hold.amount, command.amount)
    return EventDraft(
        EventType.HOLD_CAPTURED,
        command.amount,
        released_amount=hold.amount - command.amount,
        hold_id=hold.hold_id,
        metadata=command.metadata,
    )


def _release_hold(state: AccountState, command: ReleaseHold, context: _Context) -> EventDraft:
    hold = _active_hold(state, command.hold_id, context.hold_was_placed)
    return EventDraft(
        EventType.HOLD_RELEASED, hold.amount, hold_id=hold.hold_id, reason=command.reason
    )


def _charge(state: AccountState, command: Charge, context: _Context) -> EventDraft:
    _require_available(state, command.amount)
    return EventDraft(EventType.CHARGED, command.amount, metadata=command.metadata)


def _refund(state: AccountState, command: Refund, context: _Context) -> EventDraft:
    target = context.refund_target
    if target is None:
        raise RefundTargetInvalid(command.event_id, "no such event in this account")
    if target.event_type not in (EventType.CHARGED, EventType.HOLD_CAPTURED):
        raise RefundTargetInvalid(command.event_id, "only charges and captures are refunded")
    if target.refunded + command.amount > target.taken:
        raise RefundExceedsTaken(target.event_id, target.taken, target.refunded, command.amount)
    _require_balance_room(state, command.amount, context.limits)
    return EventDraft(
        EventType.REFUNDED,
        command.amount,
        refers_to=target.event_id,
        reason=command.reason,
        metadata=command.metadata,
    )


_RULES: dict[type[Command], Callable[[AccountState, Any, _Context], EventDraft]] = {
    AddCredits: _add_credits,
    PlaceHold: _place_hold,
    CaptureHold: _capture_hold,
    ReleaseHold: _release_hold,
    Charge: _charge,
    Refund: _refund,
}


def decide(
    state: AccountState,
    command: Command,
    *,
    now_us: int,
    limits: Limits,
    hold_was_placed: bool = False,
    refund_target: RefundTarget | None = None,
    budget_used: Mapping[tuple[str, str], int] | None = None,
) -> EventDraft:
    """Check the command's rules against the state; return the event to write or raise.

    `hold_was_placed` tells whether a hold id that is not active was ever placed on this
    account (then it was resolved); `refund_target` describes the refunded event, None if it
    does not exist in this account; `budget_used` is the use of each limited budget (by id and
    period) in its current period.
    """
    rule = _RULES.get(type(command))
    if rule is None:
        # Only a new Command subclass without a rule gets here: a programming error.
        raise TypeError(f"no rule decides {type(command).__name__}")
    context = _Context(now_us, limits, hold_was_placed, refund_target, budget_used or {})
    return rule(state, command, context)
