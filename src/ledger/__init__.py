"""ledgerchat's event-sourced credit ledger: accounts, holds, charges, refunds, audit.

Use `await Ledger.open(database_url)`; see docs/ledger.md for the event model and rules.
This package never imports `web` or `inference`.
"""

from ledger.application import Ledger
from ledger.audit import AuditReport, Violation
from ledger.domain.budgets import PERIODS, Budget, Period
from ledger.errors import (
    AccountNotFound,
    BudgetExceeded,
    CaptureExceedsHold,
    HoldAlreadyResolved,
    HoldExpired,
    HoldExpiryOutOfRange,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    InvariantViolation,
    LedgerBusy,
    LedgerClosed,
    LedgerError,
    RefundExceedsTaken,
    RefundTargetInvalid,
    StorageError,
    TooManyActiveHolds,
)
from ledger.models import (
    Balance,
    BudgetUse,
    HistoryEntry,
    HistoryPage,
    HoldReceipt,
    Receipt,
    Totals,
)
from ledger.settings import LedgerSettings, default_database_url

__all__ = [
    "PERIODS",
    "AccountNotFound",
    "AuditReport",
    "Balance",
    "Budget",
    "BudgetExceeded",
    "BudgetUse",
    "CaptureExceedsHold",
    "HistoryEntry",
    "HistoryPage",
    "HoldAlreadyResolved",
    "HoldExpired",
    "HoldExpiryOutOfRange",
    "HoldNotFound",
    "HoldReceipt",
    "IdempotencyConflict",
    "InsufficientCredits",
    "InvalidAmount",
    "InvalidArgument",
    "InvariantViolation",
    "Ledger",
    "LedgerBusy",
    "LedgerClosed",
    "LedgerError",
    "LedgerSettings",
    "Period",
    "Receipt",
    "RefundExceedsTaken",
    "RefundTargetInvalid",
    "StorageError",
    "TooManyActiveHolds",
    "Totals",
    "Violation",
    "default_database_url",
]
