"""Spending budgets that holds are checked against: the caller names each budget (an id, a
limit in credits and a period), the ledger measures its use and refuses a hold that would
overrun it, in the same transaction that places the hold.

A budget's use within a period is what holds placed in that period still hold plus what their
captures took; a release gives its hold back. Periods are calendar-aligned in UTC: a day starts
at 00:00, a week on Monday 00:00, a month on its 1st at 00:00; `lifetime` never resets. Pure
code, no I/O: the writer supplies the use it read under the account's lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

from ledger.domain.events import from_us, to_us
from ledger.errors import InvalidArgument

Period = Literal["day", "week", "month", "lifetime"]
PERIODS: tuple[Period, ...] = get_args(Period)
MAX_BUDGETS_PER_HOLD = 8
MAX_BUDGET_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Budget:
    """A limit on what holds placed under `budget_id` within one `period` may take.

    `budget_id` names a scope of spending (an API key, a user); one hold may carry several
    limits of one scope with different periods (a day and a lifetime limit of a key). A limit
    of None only records the hold under the scope, so a limit set later counts it."""

    budget_id: str
    limit: int | None
    period: Period

    def window_us(self, now_us: int) -> tuple[int, int | None]:
        """[start, end) of the period that holds `now_us`; end is None for `lifetime`."""
        return period_window_us(self.period, now_us)


def period_window_us(period: Period, now_us: int) -> tuple[int, int | None]:
    """The calendar period (UTC) around `now_us` as [start, end) microseconds."""
    if period == "lifetime":
        return 0, None
    now = from_us(now_us)
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if period == "day":
        start, end = day, day + timedelta(days=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())  # Monday is weekday 0
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else (start.replace(month=start.month + 1))
        )
    return to_us(start), to_us(end)


def check_budgets(budgets: object, *, max_amount: int) -> tuple[Budget, ...]:
    """The budgets of a hold, checked for shape: distinct (id, period) pairs, limits None or
    integers >= 0, known periods, at most MAX_BUDGETS_PER_HOLD."""
    if budgets is None:
        return ()
    if not isinstance(budgets, list | tuple):
        raise InvalidArgument("budgets must be a list of Budget")
    if len(budgets) > MAX_BUDGETS_PER_HOLD:
        raise InvalidArgument(f"at most {MAX_BUDGETS_PER_HOLD} budgets per hold")
    seen: set[tuple[str, str]] = set()
    for budget in budgets:
        if not isinstance(budget, Budget):
            raise InvalidArgument("budgets must be a list of Budget")
        budget_id = budget.budget_id
        if not isinstance(budget_id, str) or not 0 < len(budget_id) <= MAX_BUDGET_ID_LENGTH:
            raise InvalidArgument(f"budget_id must be 1..{MAX_BUDGET_ID_LENGTH} characters")
        if "\x00" in budget_id or " " in budget_id:
            raise InvalidArgument("budget_id must not contain spaces or NUL")
        if budget.period not in PERIODS:
            raise InvalidArgument(f"budget period must be one of {', '.join(PERIODS)}")
        if (budget_id, budget.period) in seen:
            raise InvalidArgument(f"budget {budget_id!r} has two {budget.period} limits")
        seen.add((budget_id, budget.period))
        limit = budget.limit
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= max_amount
        ):
            raise InvalidArgument(f"budget limit must be None or an integer 0..{max_amount}")
    return tuple(budgets)


def budget_ids(budgets: tuple[Budget, ...]) -> tuple[str, ...]:
    """The distinct scopes of a hold's budgets, in order."""
    return tuple(dict.fromkeys(b.budget_id for b in budgets))
