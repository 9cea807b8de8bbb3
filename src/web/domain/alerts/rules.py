"""When an alert fires: pure functions of the value before and after a change.

A crossing is a transition from above a threshold to at or below it (for the balance) or from
below to at or above it (for budget use): once per crossing, not on every chat past it. Coming
back (a top-up, a new budget period) re-arms it.
"""

from __future__ import annotations

from typing import Literal

AlertKind = Literal["low_balance", "budget_use"]


def balance_crossed(before: int, after: int, threshold: int | None) -> bool:
    """Whether the available balance went from above `threshold` to at or below it."""
    return threshold is not None and before > threshold >= after


def budget_use_percent(used: int, limit: int) -> int:
    """Whole percent of a budget used (captured + held within the period); a limit of 0 is
    fully used. The budgets work calls this with its own figures."""
    if limit <= 0:
        return 100
    return min(100, (max(used, 0) * 100) // limit)


def budget_crossed(before_used: int, after_used: int, limit: int, percent: int | None) -> bool:
    """Whether budget use went from below `percent` of `limit` to at or above it."""
    if percent is None:
        return False
    return budget_use_percent(before_used, limit) < percent <= budget_use_percent(after_used, limit)
