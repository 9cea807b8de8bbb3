"""Typed ledger errors. Every error has a stable `code` (the web layer maps codes to HTTP).

Errors whose `recorded` flag is set are business refusals: the ledger stores them under the
command's idempotency key (in `ledger_commands`, never as a ledger event), so a retry with the
same key gets the same refusal back. `error_from_record` rebuilds such an error from its code
and details.
"""

from __future__ import annotations

from typing import Any, ClassVar


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""

    code: ClassVar[str] = "ledger_error"
    recorded: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_record(self) -> dict[str, Any]:
        return {"code": self.code, "details": self.details}


class InvalidArgument(LedgerError):
    """A parameter is malformed (length, type, range, unknown name)."""

    code = "invalid_argument"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class InvalidAmount(LedgerError):
    """An amount is not a positive integer within the configured limits."""

    code = "invalid_amount"
    recorded = True  # recorded only when it depends on state (balance limit)

    def __init__(self, amount: object, reason: str) -> None:
        super().__init__(f"invalid amount {amount!r}: {reason}", amount=amount, reason=reason)


class AccountNotFound(LedgerError):
    code = "account_not_found"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} does not exist", account_id=account_id)


class InsufficientCredits(LedgerError):
    code = "insufficient_credits"
    recorded = True

    def __init__(self, balance: int, available: int, amount: int) -> None:
        super().__init__(
            f"insufficient credits: balance {balance}, available {available}, requested {amount}",
            balance=balance,
            available=available,
            amount=amount,
        )
        self.balance = balance
        self.available = available
        self.amount = amount


class TooManyActiveHolds(LedgerError):
    code = "too_many_active_holds"
    recorded = True

    def __init__(self, account_id: str, limit: int) -> None:
        super().__init__(
            f"account {account_id!r} already has {limit} active holds (the limit)",
            account_id=account_id,
            limit=limit,
        )


class BudgetExceeded(LedgerError):
    """A hold would take a budget past its limit within the budget's current period."""

    code = "budget_exceeded"
    recorded = True

    def __init__(
        self,
        budget_id: str,
        period: str,
        limit: int,
        used: int,
        amount: int,
        resets_at: str | None,
    ) -> None:
        super().__init__(
            f"{period} budget {budget_id!r} of {limit} credits has {max(limit - used, 0)} "
            f"left (requested {amount}); "
            + (f"it resets at {resets_at}" if resets_at else "it never resets"),
            budget_id=budget_id,
            period=period,
            limit=limit,
            used=used,
            amount=amount,
            resets_at=resets_at,
        )
        self.budget_id = budget_id
        self.period = period
        self.limit = limit
        self.used = used
        self.amount = amount
        self.resets_at = resets_at

    @property
    def left(self) -> int:
        return max(self.limit - self.used, 0)


class HoldExpiryOutOfRange(InvalidArgument):
    """A hold's `expires_at` is not in the future or lies beyond `hold_ttl_max_s` from now.

    Unlike other invalid arguments it depends on the clock, so it is recorded: a retry with the
    same key gets this refusal back instead of succeeding once time has moved.
    """

    code = "hold_expiry_out_of_range"
    recorded = True

    def __init__(self, expires_at: str, max_ttl_s: float) -> None:
        LedgerError.__init__(
            self,
            f"hold expiry {expires_at} must be in the future and within {max_ttl_s} s",
            expires_at=expires_at,
            max_ttl_s=max_ttl_s,
        )


class HoldNotFound(LedgerError):
    code = "hold_not_found"
    recorded = True

    def __init__(self, hold_id: str) -> None:
        super().__init__(f"hold {hold_id!r} does not exist in this account", hold_id=hold_id)


class HoldAlreadyResolved(LedgerError):
    code = "hold_already_resolved"
    recorded = True

    def __init__(self, hold_id: str) -> None:
        super().__init__(f"hold {hold_id!r} was already captured or released", hold_id=hold_id)


class HoldExpired(LedgerError):
    code = "hold_expired"
    recorded = True

    def __init__(self, hold_id: str, expires_at: str) -> None:
        super().__init__(
            f"hold {hold_id!r} expired at {expires_at} and can no longer be captured",
            hold_id=hold_id,
            expires_at=expires_at,
        )


class CaptureExceedsHold(LedgerError):
    code = "capture_exceeds_hold"
    recorded = True

    def __init__(self, hold_id: str, held: int, amount: int) -> None:
        super().__init__(
            f"cannot capture {amount} from hold {hold_id!r} of {held}",
            hold_id=hold_id,
            held=held,
            amount=amount,
        )


class RefundTargetInvalid(LedgerError):
    code = "refund_target_invalid"
    recorded = True

    def __init__(self, event_id: str, reason: str) -> None:
        super().__init__(
            f"cannot refund event {event_id!r}: {reason}", event_id=event_id, reason=reason
        )


class RefundExceedsTaken(LedgerError):
    code = "refund_exceeds_taken"
    recorded = True

    def __init__(self, event_id: str, taken: int, refunded: int, amount: int) -> None:
        super().__init__(
            f"refund of {amount} exceeds what event {event_id!r} took ({taken}) "
            f"minus earlier refunds ({refunded})",
            event_id=event_id,
            taken=taken,
            refunded=refunded,
            amount=amount,
        )


class IdempotencyConflict(LedgerError):
    code = "idempotency_conflict"

    def __init__(self, idempotency_key: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} was already used with other parameters",
            idempotency_key=idempotency_key,
        )


class LedgerBusy(LedgerError):
    """The writer could not commit in time (queue wait, retries exhausted)."""

    code = "ledger_busy"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class LedgerClosed(LedgerError):
    code = "ledger_closed"

    def __init__(self) -> None:
        super().__init__("the ledger is closed")


class StorageError(LedgerError):
    """The database failed in a way a retry did not fix."""

    code = "storage_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class InvariantViolation(StorageError):
    """A money or storage invariant does not hold: a stored row read back breaks one (the
    database was edited or damaged), or a row about to be written would (a bug in the rules).

    Raised instead of `assert` so that `python -O` cannot strip the check; a StorageError, so
    the boundaries that handle storage failures (the web answers 503) handle it too.
    """

    code = "invariant_violation"


_RECORDED: dict[str, type[LedgerError]] = {
    cls.code: cls
    for cls in (
        InvalidAmount,
        InsufficientCredits,
        BudgetExceeded,
        TooManyActiveHolds,
        HoldExpiryOutOfRange,
        HoldNotFound,
        HoldAlreadyResolved,
        HoldExpired,
        CaptureExceedsHold,
        RefundTargetInvalid,
        RefundExceedsTaken,
    )
}


def error_from_record(code: str, details: dict[str, Any]) -> LedgerError:
    """Rebuild a recorded refusal; an unknown code (newer writer) becomes a plain LedgerError."""
    cls = _RECORDED.get(code)
    if cls is None:
        return LedgerError(f"refused with {code}: {details}", **details)
    return cls(**details)
