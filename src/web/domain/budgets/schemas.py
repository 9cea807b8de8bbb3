"""Wire types of budgets. Periods are calendar-aligned in UTC; weeks start on Monday."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

Period = Literal["day", "week", "month"]
MAX_BUDGET_CREDITS = 10**12
Credits = Annotated[int, msgspec.Meta(ge=0, le=MAX_BUDGET_CREDITS)]
LimitName = Literal["key_period", "key_lifetime", "self_cap", "admin_cap"]


class KeyBudget(msgspec.Struct, forbid_unknown_fields=True):
    """An API key's limits: `period_credits` per `period`, and `lifetime_credits` in all; each
    optional (null: no such limit)."""

    period: Period = "month"
    period_credits: Credits | None = None
    lifetime_credits: Credits | None = None


class UpdateKeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    """PATCH /api/keys/{id}: `budget` replaces the key's limits (null clears them)."""

    budget: KeyBudget | None = None


class CapRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A cap on a user's spending per period (UTC calendar; weeks start on Monday)."""

    credits: Credits
    period: Period = "month"


class BudgetView(msgspec.Struct):
    """One limit and what it has used in its current period."""

    limit: LimitName
    budget_id: str
    period: str
    limit_credits: int
    used_credits: int
    left_credits: int
    resets_at: dt.datetime | None
    key_id: int | None = None


class BudgetsView(msgspec.Struct):
    budgets: list[BudgetView]
