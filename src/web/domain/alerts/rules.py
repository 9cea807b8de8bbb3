"""When an alert fires: pure functions of the value before and after a change.

A crossing is a transition from above a threshold to at or below it (for the balance) or from
below to at or above it (for budget use): once per crossing, not on every chat past it. Coming
back (a top-up, a new budget period) re-arms it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

AlertKind = Literal["low_balance", "budget_use"]


def balance_crossed(before: int, after: int, threshold: int | None) -> bool:
    """Whether the available balance went from above `threshold` to at or below it."""
    return threshold is not None and before > threshold >= after


def budget_use_percent(used: int, limit: int) -> int:
    """Whole percent of a budget used (captured + held within the period); a limit of 0 is
    fully used."""
    if limit <= 0:
        return 100
    return min(100, (max(used, 0) * 100) // limit)


def budget_crossed(before_used: int, after_used: int, limit: int, percent: int | None) -> bool:
    """Whether budget use went from below `percent` of `limit` to at or above it."""
    if percent is None:
        return False
    return budget_use_percent(before_used, limit) < percent <= budget_use_percent(after_used, limit)


@dataclass(frozen=True)
class Crossing:
    """One threshold crossed by a settled reply: the notice it leaves and its webhook event
    (without the user, request and time, which the service adds)."""

    kind: AlertKind
    subject: str
    """What crossed: "" for the balance, `<budget_id>/<period>` for a budget."""
    message: str
    event: dict[str, Any]


@dataclass(frozen=True)
class BudgetFigures:
    """A limited budget as a settled reply left it."""

    budget_id: str
    period: str
    limit: str
    """Which limit (`key_period`, `key_lifetime`, `self_cap`, `admin_cap`)."""
    limit_credits: int
    used_after: int
    words: str
    """The limit as the page names it ("this API key's day budget")."""
    resets_at: str | None


def budget_subject(budget_id: str, period: str) -> str:
    return f"{budget_id}/{period}"


def balance_crossing(before: int, after: int, threshold: int | None) -> Crossing | None:
    """The low-balance crossing of a reply that moved the available balance before -> after."""
    if threshold is None or not balance_crossed(before, after, threshold):
        return None
    return Crossing(
        kind="low_balance",
        subject="",
        message=(
            f"Your available balance fell to {after} credits, at or below your alert "
            f"threshold of {threshold}."
        ),
        event={"type": "low_balance", "available": after, "threshold": threshold},
    )


def budget_crossing(budget: BudgetFigures, cost: int, percent: int | None) -> Crossing | None:
    """The budget-use crossing of a reply that took `cost` credits of `budget` (its use went
    from `used_after - cost` to `used_after`)."""
    before = max(budget.used_after - cost, 0)
    if percent is None or not budget_crossed(
        before, budget.used_after, budget.limit_credits, percent
    ):
        return None
    used_percent = budget_use_percent(budget.used_after, budget.limit_credits)
    return Crossing(
        kind="budget_use",
        subject=budget_subject(budget.budget_id, budget.period),
        message=(
            f"You have used {used_percent}% of {budget.words} ({budget.used_after} of "
            f"{budget.limit_credits} credits), at or above your alert threshold of {percent}%."
        ),
        event={
            "type": "budget_use",
            "budget_id": budget.budget_id,
            "limit": budget.limit,
            "period": budget.period,
            "used": budget.used_after,
            "limit_credits": budget.limit_credits,
            "used_percent": used_percent,
            "threshold_percent": percent,
            "resets_at": budget.resets_at,
        },
    )
