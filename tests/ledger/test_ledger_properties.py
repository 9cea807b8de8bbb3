"""Property-based test: the ledger against an in-memory model, checked after every step.

Hypothesis drives random sequences of add, hold, capture (full, partial, too much), release,
charge, refund, holds under budgets (day, week, lifetime), clock advances (also to the next
day), sweeps, retries with the same key, key reuse with other
parameters, and close/reopen, on SQLite. Snapshots are taken by the ledger every 3 events, so
most steps cross one. After every step: balances equal the model, available >= 0, the audit
(replay vs stored balances, snapshots, hash chain, one event per key) is clean, every
command's retry gives its first answer, conservation holds, and every budget's use (captured
plus held by holds placed within its current period) equals the model's and is within its limit.

LEDGERCHAT_PROPS_EXAMPLES sets the number of examples (`nox -s props` raises it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)

from ledger import Budget, IdempotencyConflict, Ledger, LedgerError, LedgerSettings, Receipt
from ledger.clock import ManualClock
from ledger.domain import period_window_us, to_us

T = TypeVar("T")
EXAMPLES = int(os.environ.get("LEDGERCHAT_PROPS_EXAMPLES", "15"))
LEDGER_SETTINGS = LedgerSettings(
    snapshot_every=3,
    sweep_interval_s=0,
    max_active_holds_per_account=4,
    # The model lets holds wait for the sweeper, across up to 40 jumps to the next day.
    audit_expired_hold_grace_s=10**8,
)

BUDGETS = (
    Budget("day", 120, "day"),
    Budget("week", 260, "week"),
    Budget("life", 500, "lifetime"),
)
DAY_US = 86_400 * 1_000_000


@dataclass
class BudgetEntry:
    """A hold placed under budgets, as the model sees it."""

    budget_ids: tuple[str, ...]
    placed_at_us: int
    amount: int


@dataclass
class ModelAccount:
    posted: int = 0
    holds: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> amount, expiry
    events: int = 0
    budget_entries: dict[str, BudgetEntry] = field(default_factory=dict)  # by hold id

    def budget_used(self, budget: Budget, now_us: int) -> int:
        start_us, end_us = period_window_us(budget.period, now_us)
        return sum(
            entry.amount
            for entry in self.budget_entries.values()
            if budget.budget_id in entry.budget_ids
            and start_us <= entry.placed_at_us
            and (end_us is None or entry.placed_at_us < end_us)
        )

    @property
    def held(self) -> int:
        return sum(amount for amount, _ in self.holds.values())

    @property
    def available(self) -> int:
        return self.posted - self.held


@dataclass
class Sent:
    """A command as sent and its first answer (a receipt or an error code)."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    answer: Receipt | str


class LedgerMachine(RuleBasedStateMachine):
    # Hold ids placed (resolved or not, so captures of resolved holds are tried too).
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = tempfile.mkdtemp(prefix="ledger-props-")
        self.url = f"sqlite+aiosqlite:///{self.directory}/ledger.db"
        self.clock = ManualClock()
        self.ledger = self.run(Ledger.open(self.url, settings=LEDGER_SETTINGS, clock=self.clock))
        self.accounts = [self.run(self.ledger.open_account(f"owner-{n}")) for n in range(2)]
        self.model = {a: ModelAccount() for a in self.accounts}
        self.totals = {"issued": 0, "captured": 0, "charged": 0, "refunded": 0}
        for account in self.accounts:  # start funded so that early steps are not all refusals
            self.run(self.ledger.add_credits(account, 300, source="grant", idempotency_key="seed"))
            self.model[account].posted = 300
            self.model[account].events = 1
            self.totals["issued"] += 300
        self.resolved: set[str] = set()
        self.taken: dict[str, list[Any]] = {}  # event id -> [account, amount, refunded]
        self.sent: list[Sent] = []
        self.keys = 0

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        try:
            self.run(self.ledger.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def new_key(self) -> str:
        self.keys += 1
        return f"k{self.keys}"

    def send(self, method: str, *args: Any, **kwargs: Any) -> Receipt | str:
        try:
            answer: Receipt | str = self.run(getattr(self.ledger, method)(*args, **kwargs))
        except LedgerError as error:
            answer = error.code
        self.sent.append(Sent(method, args, kwargs, answer))
        return answer

    def now_us(self) -> int:
        return to_us(self.clock.now)

    def applied(self, account: str, answer: Receipt | str) -> bool:
        if isinstance(answer, str):
            return False
        self.model[account].events += 1
        model = self.model[account]
        assert (answer.balance.posted, answer.balance.held) == (model.posted, model.held)
        return True

    # -- commands -------------------------------------------------------------------------

    @rule(which=st.integers(0, 1), amount=st.integers(1, 200))
    def add(self, which: int, amount: int) -> None:
        account = self.accounts[which]
        answer = self.send(
            "add_credits", account, amount, source="grant", idempotency_key=self.new_key()
        )
        self.model[account].posted += amount
        self.totals["issued"] += amount
        assert self.applied(account, answer)

    @rule(target=holds, which=st.integers(0, 1), amount=st.integers(1, 150), ttl=st.integers(1, 20))
    def hold(self, which: int, amount: int, ttl: int) -> Any:
        return self.place(which, amount, ttl, ())

    @rule(
        target=holds,
        which=st.integers(0, 1),
        amount=st.integers(1, 150),
        ttl=st.integers(1, 20),
        chosen=st.lists(st.sampled_from(BUDGETS), min_size=1, max_size=3, unique=True),
    )
    def budget_hold(self, which: int, amount: int, ttl: int, chosen: list[Budget]) -> Any:
        """A hold under one to three budgets: refused when any would pass its limit."""
        return self.place(which, amount, ttl, tuple(chosen))

    def place(self, which: int, amount: int, ttl: int, budgets: tuple[Budget, ...]) -> Any:
        account = self.accounts[which]
        model = self.model[account]
        extra: dict[str, Any] = {"budgets": list(budgets)} if budgets else {}
        answer = self.send(
            "place_hold",
            account,
            amount,
            ttl_s=ttl,
            purpose="chat",
            reference="r",
            idempotency_key=self.new_key(),
            **extra,
        )
        if len(model.holds) >= LEDGER_SETTINGS.max_active_holds_per_account:
            assert answer == "too_many_active_holds"
            return multiple()
        if model.available < amount:
            assert answer == "insufficient_credits"
            return multiple()
        now_us = self.now_us()
        if any(model.budget_used(b, now_us) + amount > b.limit for b in budgets):
            assert answer == "budget_exceeded"
            return multiple()
        assert isinstance(answer, Receipt) and answer.hold_id is not None
        model.holds[answer.hold_id] = (amount, now_us + ttl * 1_000_000)
        if budgets:
            model.budget_entries[answer.hold_id] = BudgetEntry(
                tuple(b.budget_id for b in budgets), now_us, amount
            )
        assert self.applied(account, answer)
        return answer.hold_id

    @rule(hold_id=holds, percent=st.sampled_from([0, 50, 100, 101]))
    def capture(self, hold_id: str, percent: int) -> None:
        account = hold_id.rpartition(":")[0]
        model = self.model[account]
        held = model.holds.get(hold_id, (10, 0))[0]
        amount = -(-held * percent // 100)  # ceiling: 101% is always more than the hold
        answer = self.send("capture_hold", account, hold_id, amount, idempotency_key=self.new_key())
        if hold_id in self.resolved:
            assert answer == "hold_already_resolved"
        elif self.now_us() >= model.holds[hold_id][1]:
            assert answer == "hold_expired"
        elif amount > held:
            assert answer == "capture_exceeds_hold"
        else:
            del model.holds[hold_id]
            self.resolved.add(hold_id)
            if hold_id in model.budget_entries:
                model.budget_entries[hold_id].amount = amount
            model.posted -= amount
            self.totals["captured"] += amount
            assert self.applied(account, answer) and isinstance(answer, Receipt)
            self.taken[answer.event_id] = [account, amount, 0]

    @rule(hold_id=holds, reason=st.sampled_from(["aborted", "failed", "cancelled"]))
    def release(self, hold_id: str, reason: str) -> None:
        account = hold_id.rpartition(":")[0]
        answer = self.send(
            "release_hold", account, hold_id, reason=reason, idempotency_key=self.new_key()
        )
        if hold_id in self.resolved:
            assert answer == "hold_already_resolved"
        else:
            del self.model[account].holds[hold_id]
            self.model[account].budget_entries.pop(hold_id, None)
            self.resolved.add(hold_id)
            assert self.applied(account, answer)

    @rule(which=st.integers(0, 1), amount=st.integers(1, 150))
    def charge(self, which: int, amount: int) -> None:
        account = self.accounts[which]
        model = self.model[account]
        answer = self.send("charge", account, amount, idempotency_key=self.new_key())
        if model.available < amount:
            assert answer == "insufficient_credits"
            return
        model.posted -= amount
        self.totals["charged"] += amount
        assert self.applied(account, answer) and isinstance(answer, Receipt)
        self.taken[answer.event_id] = [account, amount, 0]

    @precondition(lambda self: bool(self.taken))
    @rule(index=st.integers(0, 100), extra=st.integers(-3, 1))
    def refund(self, index: int, extra: int) -> None:
        """Refund around what is left of a charge/capture: exactly, a little less, one more."""
        event_id = sorted(self.taken)[index % len(self.taken)]
        account, took, refunded = self.taken[event_id]
        amount = max(1, took - refunded + extra)
        answer = self.send(
            "refund", account, event_id, amount, reason="x", idempotency_key=self.new_key()
        )
        if refunded + amount > took:
            assert answer == "refund_exceeds_taken"
            return
        self.taken[event_id][2] += amount
        self.model[account].posted += amount
        self.totals["refunded"] += amount
        assert self.applied(account, answer)

    @rule(
        which=st.integers(0, 1),
        amount=st.integers(1, 100),
        ttl=st.integers(1, 20),
        wait=st.integers(0, 25),
        percent=st.sampled_from([0, 50, 100, 101]),
        release=st.booleans(),
    )
    def hold_wait_resolve(
        self, which: int, amount: int, ttl: int, wait: int, percent: int, release: bool
    ) -> None:
        """The chat request's life in one step: hold, time passes, capture or release."""
        hold_id = self.hold(which, amount, ttl)
        if not isinstance(hold_id, str):
            return
        self.clock.advance(wait)
        if release:
            self.release(hold_id, "failed")
        else:
            self.capture(hold_id, percent)

    @rule(seconds=st.integers(1, 15))
    def advance_clock(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule()
    def advance_to_next_day(self) -> None:
        """Cross a calendar boundary: day budgets (and on Mondays week budgets) reset."""
        now_us = self.now_us()
        self.clock.advance((DAY_US - now_us % DAY_US) / 1_000_000)

    @rule()
    def sweep(self) -> None:
        now_us = self.now_us()
        expired = [
            (account, hold_id)
            for account in self.accounts
            for hold_id, (_, expires_at_us) in self.model[account].holds.items()
            if expires_at_us <= now_us
        ]
        assert self.run(self.ledger.sweep_expired_holds()) == len(expired)
        for account, hold_id in expired:
            del self.model[account].holds[hold_id]
            self.model[account].budget_entries.pop(hold_id, None)
            self.resolved.add(hold_id)
            self.model[account].events += 1

    @precondition(lambda self: bool(self.sent))
    @rule(index=st.integers(0, 1000))
    def retry_same_key(self, index: int) -> None:
        sent = self.sent[index % len(self.sent)]
        try:
            again: Receipt | str = self.run(
                getattr(self.ledger, sent.method)(*sent.args, **sent.kwargs)
            )
        except LedgerError as error:
            again = error.code
        if isinstance(sent.answer, str):
            assert again == sent.answer
        else:
            assert isinstance(again, Receipt) and again.replayed
            assert (again.event_id, again.balance) == (sent.answer.event_id, sent.answer.balance)

    @precondition(lambda self: bool(self.sent))
    @rule(index=st.integers(0, 1000))
    def reuse_key_with_other_parameters(self, index: int) -> None:
        sent = self.sent[index % len(self.sent)]
        account = sent.args[0]
        key = sent.kwargs["idempotency_key"]
        try:
            self.run(self.ledger.charge(account, 10**6, idempotency_key=key))
        except IdempotencyConflict:
            return
        raise AssertionError("reusing a key with other parameters must conflict")

    @rule()
    def close_and_reopen(self) -> None:
        self.run(self.ledger.close())
        self.ledger = self.run(Ledger.open(self.url, settings=LEDGER_SETTINGS, clock=self.clock))

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def storage_equals_model(self) -> None:
        for account in self.accounts:
            balance = self.run(self.ledger.balance(account))
            model = self.model[account]
            assert (balance.posted, balance.held) == (model.posted, model.held)
            assert balance.available >= 0

    @invariant()
    def replay_equals_snapshots_and_one_event_per_key(self) -> None:
        report = self.run(self.ledger.audit())
        assert report.clean, report.violations
        for row in report.accounts:
            assert row.events == self.model[row.account_id].events

    @invariant()
    def budgets_within_limits(self) -> None:
        """Captured + held within each budget's current period equals the model's and never
        passes the limit."""
        now_us = self.now_us()
        for account in self.accounts:
            for budget in BUDGETS:
                use = self.run(self.ledger.budget_use(account, budget))
                assert use.used == self.model[account].budget_used(budget, now_us)
                assert use.used <= budget.limit

    @invariant()
    def conservation(self) -> None:
        totals = self.run(self.ledger.totals())
        assert (totals.issued, totals.captured, totals.charged, totals.refunded) == (
            self.totals["issued"],
            self.totals["captured"],
            self.totals["charged"],
            self.totals["refunded"],
        )
        posted = sum(m.posted for m in self.model.values())
        held = sum(m.held for m in self.model.values())
        assert totals.issued - totals.captured - totals.charged + totals.refunded == posted
        assert totals.outstanding_holds == held


LedgerMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLedgerProperties = LedgerMachine.TestCase
