"""Budgets checked in the hold's own transaction: concurrency, periods, release and expiry.

All run on both backends (the `ledger` fixture is parametrised over SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from ledger import Budget, BudgetExceeded, HoldReceipt, Ledger
from ledger.clock import ManualClock
from ledger.domain import from_us, period_window_us, to_us


async def funded_account(ledger: Ledger, owner: str, credits: int) -> str:
    """A new account of `owner` holding `credits`."""
    account_id = await ledger.open_account(owner)
    await ledger.add_credits(account_id, credits, source="grant", idempotency_key="seed")
    return account_id


async def chat_hold(
    ledger: Ledger, account_id: str, amount: int, key: str, *budgets: Budget, **extra: float
) -> HoldReceipt:
    """A chat's hold of `amount` under `budgets`, keyed (and referenced) by `key`."""
    return await ledger.place_hold(
        account_id,
        amount,
        purpose="chat",
        reference=key,
        idempotency_key=key,
        budgets=budgets,
        **extra,
    )


def window(period: str, moment: datetime) -> tuple[datetime, datetime | None]:
    start_us, end_us = period_window_us(period, to_us(moment))  # type: ignore[arg-type]
    return from_us(start_us), None if end_us is None else from_us(end_us)


class TestPeriods:
    def test_calendar_periods_in_utc(self) -> None:
        """A day starts at 00:00 UTC, a week on Monday, a month on the 1st (December rolls
        into January); lifetime never ends."""
        moment = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)  # a Thursday
        assert window("day", moment) == (
            datetime(2026, 12, 31, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        )
        assert window("week", moment) == (
            datetime(2026, 12, 28, tzinfo=UTC),
            datetime(2027, 1, 4, tzinfo=UTC),
        )
        assert window("month", moment) == (
            datetime(2026, 12, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        )
        assert window("lifetime", moment) == (datetime(1970, 1, 1, tzinfo=UTC), None)


class TestBudgets:
    async def test_concurrent_holds_never_overrun_a_budget(self, ledger: Ledger) -> None:
        """50 concurrent holds of 10 against a budget of 50: exactly 5 are placed, the rest
        are refused with BudgetExceeded, and the budget's use never passes its limit."""
        account_id = await funded_account(ledger, "bob", 10_000)
        budget = Budget("key:1:day", 50, "day")

        async def hold(n: int) -> str | BudgetExceeded:
            try:
                receipt = await chat_hold(ledger, account_id, 10, f"h{n}", budget)
            except BudgetExceeded as exc:
                return exc
            return str(receipt.hold_id)

        results = await asyncio.gather(*(hold(n) for n in range(50)))
        placed = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, BudgetExceeded)]
        assert len(placed) == 5 and len(refused) == 45
        assert (await ledger.budget_use(account_id, budget)).used == 50
        # Captures count what they took; the rest goes back to the budget.
        for n, hold_id in enumerate(placed):
            await ledger.capture_hold(account_id, hold_id, 7, idempotency_key=f"c{n}")
        use = await ledger.budget_use(account_id, budget)
        assert (use.used, use.left) == (35, 15)
        await chat_hold(ledger, account_id, 10, "after", budget)
        with pytest.raises(BudgetExceeded) as refused_one:
            await chat_hold(ledger, account_id, 10, "over", budget)
        assert (refused_one.value.left, refused_one.value.limit) == (5, 50)

    async def test_budget_resets_at_the_calendar_boundary(
        self, ledger: Ledger, clock: ManualClock
    ) -> None:
        """A day budget used up at 23:59:59 refuses, names midnight UTC as its reset, and
        takes holds again from midnight on (the clock moves by hand)."""
        clock.now = datetime(2026, 3, 1, 23, 59, 0, tzinfo=UTC)
        account_id = await funded_account(ledger, "carol", 1_000)
        budget = Budget("user:carol:self", 30, "day")
        receipt = await chat_hold(ledger, account_id, 30, "a", budget)
        await ledger.capture_hold(account_id, str(receipt.hold_id), 30, idempotency_key="ca")
        clock.advance(59)
        with pytest.raises(BudgetExceeded) as refused:
            await chat_hold(ledger, account_id, 1, "b", budget)
        assert refused.value.resets_at == "2026-03-02T00:00:00+00:00"
        assert (refused.value.used, refused.value.left) == (30, 0)
        clock.advance(1)
        await chat_hold(ledger, account_id, 30, "c", budget)

    async def test_release_and_expiry_give_the_budget_back(
        self, ledger: Ledger, clock: ManualClock
    ) -> None:
        """A released hold and an expired (swept) hold no longer count against a budget; the
        lowest of several budgets is the one that refuses."""
        account_id = await funded_account(ledger, "dave", 1_000)
        week = Budget("key:9:week", 100, "week")
        cap = Budget("user:dave:admin", 40, "month")
        first = await chat_hold(ledger, account_id, 40, "a", week, cap)
        with pytest.raises(BudgetExceeded) as refused:
            await chat_hold(ledger, account_id, 1, "b", week, cap)
        assert refused.value.budget_id == "user:dave:admin"
        await ledger.release_hold(
            account_id, str(first.hold_id), reason="aborted", idempotency_key="ra"
        )
        assert (await ledger.budget_use(account_id, cap)).used == 0
        await chat_hold(ledger, account_id, 40, "c", week, cap, ttl_s=10)
        clock.advance(11)
        assert await ledger.sweep_expired_holds() == 1
        assert (await ledger.budget_use(account_id, week)).used == 0

    async def test_a_refused_hold_is_refused_again_on_retry(
        self, ledger: Ledger, clock: ManualClock
    ) -> None:
        """The refusal depends on time, so it is recorded under the key: a retry after the
        reset gets the same refusal back, not a hold."""
        account_id = await funded_account(ledger, "erin", 1_000)
        budget = Budget("b", 5, "day")
        first = await chat_hold(ledger, account_id, 5, "a", budget)
        await ledger.capture_hold(account_id, str(first.hold_id), 5, idempotency_key="ca")
        with pytest.raises(BudgetExceeded):
            await chat_hold(ledger, account_id, 5, "b", budget)
        clock.advance(86_400)
        with pytest.raises(BudgetExceeded):
            await chat_hold(ledger, account_id, 5, "b", budget)
        # A new request (a new key) gets the new day's budget.
        await chat_hold(ledger, account_id, 5, "c", budget)
