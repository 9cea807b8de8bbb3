"""Concurrency: a Jepsen-style bank test, same-key storms, and several writer processes.

All run on both backends. The bank test checks every balance a reader saw against the
committed log afterwards: a read that matches no prefix of the log is a wrong total.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

from ledger import (
    Balance,
    HoldAlreadyResolved,
    InsufficientCredits,
    Ledger,
    LedgerSettings,
    TooManyActiveHolds,
)
from ledger.clock import ManualClock

WORKER = Path(__file__).with_name("ledger_worker.py")


async def full_history(ledger: Ledger, account_id: str) -> list[tuple[int, int, int]]:
    """(sequence, posted_after, held_after) of every event, oldest first."""
    entries = []
    cursor = None
    while True:
        page = await ledger.history(account_id, cursor=cursor, limit=200)
        entries.extend((e.sequence, e.posted_after, e.held_after) for e in page.entries)
        if page.next_cursor is None:
            return sorted(entries)
        cursor = page.next_cursor


class TestBank:
    async def test_hot_accounts_never_show_wrong_or_negative_balances(self, ledger: Ledger) -> None:
        """Many tasks hold/capture/release on 3 hot accounts while readers read balances and
        totals; every observed balance is a state of the committed log, none is negative,
        and the final totals equal what the clients were told."""
        rng = random.Random(7)
        accounts = [await ledger.open_account(f"hot-{n}") for n in range(3)]
        funding = 500
        for account_id in accounts:
            await ledger.add_credits(account_id, funding, source="grant", idempotency_key="seed")
        captured_by_clients = 0
        refused = 0
        observed: dict[str, list[Balance]] = {a: [] for a in accounts}
        done = asyncio.Event()

        async def client(index: int) -> None:
            nonlocal captured_by_clients, refused
            for n in range(25):
                account_id = rng.choice(accounts)
                amount = rng.randint(1, 60)
                try:
                    hold = await ledger.place_hold(
                        account_id,
                        amount,
                        purpose="p",
                        reference="r",
                        idempotency_key=f"h-{index}-{n}",
                    )
                except (InsufficientCredits, TooManyActiveHolds):
                    refused += 1
                    continue
                if rng.random() < 0.7:
                    take = rng.randint(0, amount)
                    await ledger.capture_hold(
                        account_id, hold.hold, take, idempotency_key=f"c-{index}-{n}"
                    )
                    captured_by_clients += take
                else:
                    await ledger.release_hold(
                        account_id, hold.hold, reason="aborted", idempotency_key=f"r-{index}-{n}"
                    )

        async def reader() -> None:
            while not done.is_set():
                for account_id in accounts:
                    balance = await ledger.balance(account_id)
                    assert balance.available >= 0 and balance.held >= 0
                    observed[account_id].append(balance)
                totals = await ledger.totals()
                assert totals.available >= 0 and totals.outstanding_holds >= 0
                await asyncio.sleep(0)

        readers = [asyncio.create_task(reader()) for _ in range(3)]
        await asyncio.gather(*(client(i) for i in range(24)))
        done.set()
        await asyncio.gather(*readers)

        wrong = 0
        for account_id in accounts:
            states = {(posted, held) for _, posted, held in await full_history(ledger, account_id)}
            wrong += sum((b.posted, b.held) not in states for b in observed[account_id])
        assert wrong == 0
        assert sum(len(v) for v in observed.values()) > 0
        totals = await ledger.totals()
        assert totals.issued == funding * len(accounts)
        assert totals.captured == captured_by_clients
        assert totals.outstanding_holds == 0
        assert totals.posted == funding * len(accounts) - captured_by_clients
        assert refused > 0, "the workload should hit insufficient credits sometimes"
        report = await ledger.audit()
        assert report.clean, report.violations


class TestSameKey:
    async def test_concurrent_requests_with_one_key_have_one_effect(
        self, ledger: Ledger, funded: str
    ) -> None:
        """50 concurrent charges with one key: one event, every caller gets its receipt."""
        receipts = await asyncio.gather(
            *(ledger.charge(funded, 10, idempotency_key="storm") for _ in range(50))
        )
        assert len({r.event_id for r in receipts}) == 1
        assert sum(not r.replayed for r in receipts) == 1
        assert (await ledger.balance(funded)).posted == 990

    async def test_two_writers_one_key_one_effect(
        self, database_url: str, settings: LedgerSettings, clock: ManualClock
    ) -> None:
        """Two ledgers (two writers, as in two processes) racing one key: one effect."""
        first = await Ledger.open(database_url, settings=settings, clock=clock)
        second = await Ledger.open(database_url, settings=settings, clock=clock)
        try:
            account = await first.open_account("alice")
            await first.add_credits(account, 100, source="grant", idempotency_key="seed")
            receipts = await asyncio.gather(
                *(
                    (first if n % 2 else second).charge(account, 7, idempotency_key="race")
                    for n in range(20)
                )
            )
            assert len({r.event_id for r in receipts}) == 1
            assert (await first.balance(account)).posted == 93
        finally:
            await first.close()
            await second.close()

    async def test_concurrent_captures_of_one_hold_resolve_it_once(
        self, ledger: Ledger, funded: str
    ) -> None:
        """Different keys capturing the same hold at once: one wins, the rest are refused."""
        hold = await ledger.place_hold(funded, 50, purpose="p", reference="r", idempotency_key="h")
        results = await asyncio.gather(
            *(
                ledger.capture_hold(funded, hold.hold, 50, idempotency_key=f"c{n}")
                for n in range(10)
            ),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1
        assert all(
            isinstance(r, HoldAlreadyResolved) for r in results if isinstance(r, BaseException)
        )
        assert (await ledger.balance(funded)).posted == 950


class TestSameBatch:
    async def test_hold_placed_and_captured_in_one_batch(self, ledger: Ledger, funded: str) -> None:
        """Hold ids are predictable; a capture that arrives in the hold's own batch works and
        leaves the hold-expiry index consistent (audit clean)."""
        predicted = f"{funded}:2"  # the seed is event 1
        hold, capture = await asyncio.gather(
            ledger.place_hold(funded, 30, purpose="p", reference="r", idempotency_key="h"),
            ledger.capture_hold(funded, predicted, 10, idempotency_key="c"),
        )
        assert hold.hold_id == predicted and capture.hold_id == predicted
        assert (await ledger.balance(funded)).held == 0
        report = await ledger.audit()
        assert report.clean, report.violations


class TestProcesses:
    async def test_two_processes_write_the_same_accounts(
        self, database_url: str, settings: LedgerSettings
    ) -> None:
        """Two OS processes hold and capture on the same two accounts and race one shared key
        per account: every operation counts once, the shared charges apply once, audit clean."""
        ledger = await Ledger.open(database_url, settings=settings)
        try:
            accounts = [await ledger.open_account(f"shared-{n}") for n in range(2)]
            for account_id in accounts:
                await ledger.add_credits(account_id, 10_000, source="grant", idempotency_key="s")
        finally:
            await ledger.close()
        pairs = 60
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                database_url,
                f"p{n}",
                str(pairs),
                *accounts,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for n in range(2)
        ]
        outputs = []
        for process in processes:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=240)
            assert process.returncode == 0, stderr.decode()[-2000:]
            outputs.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        assert sum(o["shared_applied"] for o in outputs) == len(accounts)
        captured = sum(o["captured"] for o in outputs)
        assert captured == 2 * pairs * 3
        ledger = await Ledger.open(database_url, settings=settings)
        try:
            totals = await ledger.totals()
            assert totals.captured == captured
            assert totals.charged == len(accounts)
            assert totals.posted == 20_000 - captured - len(accounts)
            report = await ledger.audit()
            assert report.clean, report.violations
            assert report.events_checked == 2 + 2 * 2 * pairs + len(accounts)
        finally:
            await ledger.close()
