"""Money invariants raise the typed `InvariantViolation`, on both sides of storage and under
`python -O` (which strips `assert`): a hand-edited row read back never becomes a balance."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import text

from ledger import Ledger, LedgerSettings
from ledger.clock import ManualClock
from ledger.domain import (
    AccountState,
    Event,
    EventDraft,
    EventType,
    ReplayError,
    apply,
    complete,
    hash_of,
)
from ledger.errors import InvariantViolation, StorageError


async def tamper(ledger: Ledger, statement: str, **parameters: object) -> None:
    """Change stored rows behind the ledger's back, as a person with database access could."""
    async with ledger.store.engines.write.begin() as connection:
        result = await connection.execute(text(statement), parameters)
        assert result.rowcount >= 1


class TestDomain:
    def test_completing_an_overdraft_is_an_invariant_violation(self) -> None:
        """A draft the rules should have refused (a charge beyond available) cannot become an
        event: `complete` raises instead of asserting."""
        state = AccountState("acct_a", "alice", posted=10)
        with pytest.raises(InvariantViolation):
            complete(
                state,
                EventDraft(EventType.CHARGED, 11),
                idempotency_key="k",
                fingerprint="f" * 64,
                recorded_at_us=1,
            )

    def test_replaying_a_hold_without_id_is_a_replay_error(self) -> None:
        """A stored hold_placed event without a hold id fails replay with a typed error."""
        state = AccountState("acct_a", "alice", posted=10)
        values: dict[str, object] = {
            "account_id": "acct_a",
            "sequence": 1,
            "event_type": EventType.HOLD_PLACED,
            "amount": 5,
            "released_amount": 0,
            "hold_id": None,
            "refers_to": None,
            "expires_at_us": None,
            "purpose": "chat",
            "reference": "",
            "reason": None,
            "source": None,
            "note": None,
            "posted_after": 10,
            "held_after": 5,
            "idempotency_key": "k",
            "fingerprint": "f" * 64,
            "recorded_at_us": 1,
            "metadata": {},
            "prev_hash": state.head_hash,
        }
        event = Event(**values, hash=hash_of(values))  # type: ignore[arg-type]
        with pytest.raises(ReplayError) as raised:
            apply(state, event)
        assert isinstance(raised.value, InvariantViolation)


class TestStoredRows:
    async def test_snapshot_holding_more_than_posted_is_refused(
        self, ledger: Ledger, funded: str
    ) -> None:
        """A snapshot edited to hold more than the account has: balance raises
        InvariantViolation (a StorageError) instead of reporting negative available."""
        await tamper(
            ledger,
            "UPDATE ledger_snapshots SET held = 5000 WHERE account_id = :account",
            account=funded,
        )
        with pytest.raises(InvariantViolation) as raised:
            await ledger.balance(funded)
        assert isinstance(raised.value, StorageError)
        assert raised.value.code == "invariant_violation"

    async def test_snapshot_held_must_match_its_holds(self, ledger: Ledger, funded: str) -> None:
        """A snapshot whose held total disagrees with its list of holds is refused."""
        await tamper(
            ledger,
            "UPDATE ledger_snapshots SET posted = 100, held = 7 WHERE account_id = :account",
            account=funded,
        )
        with pytest.raises(InvariantViolation):
            await ledger.balance(funded)

    async def test_history_refuses_an_event_with_negative_available(
        self, ledger: Ledger, funded: str
    ) -> None:
        """An event row edited so that held exceeds posted after it is not served as history."""
        await tamper(
            ledger,
            "UPDATE ledger_events SET held_after = posted_after + 1 WHERE account_id = :account",
            account=funded,
        )
        with pytest.raises(InvariantViolation):
            await ledger.history(funded)

    async def test_a_writer_does_not_decide_on_a_tampered_log(
        self, database_url: str, settings: LedgerSettings, clock: ManualClock
    ) -> None:
        """A charge's amount edited to be negative (it would add credits on replay): a writer
        that loads the account refuses with InvariantViolation and writes nothing."""
        first = await Ledger.open(database_url, settings=settings, clock=clock)
        try:
            account = await first.open_account("alice")
            await first.add_credits(account, 100, source="grant", idempotency_key="seed")
            await first.charge(account, 30, idempotency_key="c1")
            await tamper(
                first,
                "UPDATE ledger_events SET amount = -30 WHERE account_id = :account "
                "AND sequence = 2",
                account=account,
            )
        finally:
            await first.close()
        second = await Ledger.open(database_url, settings=settings, clock=clock)
        try:
            with pytest.raises(InvariantViolation):
                await second.charge(account, 90, idempotency_key="c2")
            page = await second.history(account, types=["credits_added"])
            assert len(page.entries) == 1
        finally:
            await second.close()


def test_checks_survive_python_optimise(sqlite_url: str) -> None:
    """Under `python -O` (asserts stripped) a tampered snapshot still raises
    InvariantViolation instead of a balance with negative available."""
    script = textwrap.dedent(
        f"""
        import asyncio
        import sqlite3
        from ledger import Ledger, LedgerSettings

        async def main() -> None:
            settings = LedgerSettings(sweep_interval_s=0)
            ledger = await Ledger.open({sqlite_url!r}, settings=settings)
            try:
                account = await ledger.open_account("alice")
                await ledger.add_credits(account, 10, source="grant", idempotency_key="k")
                path = {sqlite_url.removeprefix("sqlite+aiosqlite:///")!r}
                connection = sqlite3.connect(path)
                connection.execute("UPDATE ledger_snapshots SET held = 500")
                connection.commit()
                connection.close()
                try:
                    balance = await ledger.balance(account)
                    print("BALANCE", balance)
                except Exception as exc:
                    print("RAISED", type(exc).__name__)
            finally:
                await ledger.close()

        asyncio.run(main())
        """
    )
    completed = subprocess.run(
        [sys.executable, "-O", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == "RAISED InvariantViolation"
