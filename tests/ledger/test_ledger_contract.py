"""The ledger's storage contract, run unchanged against SQLite and PostgreSQL.

Every test uses the `ledger` fixture, which is parametrised over both backends through the
shared `database_url` fixture.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ledger import (
    AccountNotFound,
    CaptureExceedsHold,
    HoldAlreadyResolved,
    HoldExpired,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    Ledger,
    LedgerSettings,
    RefundExceedsTaken,
    RefundTargetInvalid,
    TooManyActiveHolds,
)
from ledger.clock import ManualClock
from ledger.storage.schema import commands, events, snapshots


async def count_rows(ledger: Ledger, table: object) -> int:
    async with ledger.store.engines.read.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


class TestAccounts:
    async def test_open_account_is_idempotent_per_owner(self, ledger: Ledger) -> None:
        """The same owner always gets the same default account; other owners get their own."""
        first = await ledger.open_account("alice")
        assert await ledger.open_account("alice") == first
        assert await ledger.open_account("bob") != first
        assert await ledger.accounts_of("alice") == [first]

    async def test_extra_accounts_are_listed_after_the_default(self, ledger: Ledger) -> None:
        """create_account adds a separate account; accounts_of lists the default first."""
        default = await ledger.open_account("alice")
        extra = await ledger.create_account("alice")
        assert extra != default
        assert await ledger.accounts_of("alice") == [default, extra]

    async def test_unknown_account_is_refused(self, ledger: Ledger) -> None:
        """Commands and reads on a missing account raise AccountNotFound."""
        with pytest.raises(AccountNotFound):
            await ledger.add_credits("acct_missing", 5, source="grant", idempotency_key="k")
        with pytest.raises(AccountNotFound):
            await ledger.balance("acct_missing")
        with pytest.raises(AccountNotFound):
            await ledger.history("acct_missing")


class TestCommands:
    async def test_credits_holds_captures_and_balances(self, ledger: Ledger, funded: str) -> None:
        """A hold reduces available, a partial capture takes part and releases the rest."""
        hold = await ledger.place_hold(
            funded, 300, ttl_s=60, purpose="chat", reference="req-1", idempotency_key="h1"
        )
        assert (hold.balance.posted, hold.balance.held, hold.balance.available) == (1000, 300, 700)
        assert hold.hold_id == hold.event_id
        capture = await ledger.capture_hold(
            funded, hold.hold, 120, idempotency_key="c1", metadata={"model": "gemma-3"}
        )
        assert capture.amount == 120 and capture.released_amount == 180
        assert (capture.balance.posted, capture.balance.held) == (880, 0)
        assert await ledger.balance(funded) == capture.balance

    async def test_capture_of_zero_releases_everything(self, ledger: Ledger, funded: str) -> None:
        """Capturing 0 is allowed: nothing is taken and the whole hold is released."""
        hold = await ledger.place_hold(
            funded, 50, purpose="chat", reference="r", idempotency_key="h"
        )
        receipt = await ledger.capture_hold(funded, hold.hold, 0, idempotency_key="c")
        assert (receipt.balance.posted, receipt.balance.available) == (1000, 1000)

    async def test_release_returns_the_hold(self, ledger: Ledger, funded: str) -> None:
        """release_hold gives the whole amount back with the given reason."""
        hold = await ledger.place_hold(
            funded, 70, purpose="chat", reference="r", idempotency_key="h"
        )
        receipt = await ledger.release_hold(
            funded, hold.hold, reason="aborted", idempotency_key="r"
        )
        assert receipt.balance.available == 1000
        page = await ledger.history(funded, limit=1)
        assert page.entries[0].reason == "aborted"

    async def test_open_holds_lists_unresolved_holds_only(
        self, ledger: Ledger, funded: str
    ) -> None:
        """open_holds: hold id -> amount of every hold neither captured nor released."""
        kept = await ledger.place_hold(
            funded, 40, purpose="chat", reference="a", idempotency_key="h-a"
        )
        captured = await ledger.place_hold(
            funded, 30, purpose="chat", reference="b", idempotency_key="h-b"
        )
        released = await ledger.place_hold(
            funded, 20, purpose="chat", reference="c", idempotency_key="h-c"
        )
        await ledger.capture_hold(funded, captured.hold, 10, idempotency_key="c-b")
        await ledger.release_hold(funded, released.hold, reason="failed", idempotency_key="r-c")
        assert await ledger.open_holds(funded) == {kept.hold: 40}
        with pytest.raises(AccountNotFound):
            await ledger.open_holds("acct_missing")

    async def test_insufficient_credits_states_figures_and_writes_nothing(
        self, ledger: Ledger, funded: str
    ) -> None:
        """A charge above available fails with balance, available and amount; no event."""
        await ledger.place_hold(funded, 900, purpose="chat", reference="r", idempotency_key="h")
        events_before = await count_rows(ledger, events)
        with pytest.raises(InsufficientCredits) as refused:
            await ledger.charge(funded, 101, idempotency_key="too-much")
        assert (refused.value.balance, refused.value.available, refused.value.amount) == (
            1000,
            100,
            101,
        )
        assert "balance 1000" in str(refused.value) and "101" in str(refused.value)
        assert await count_rows(ledger, events) == events_before
        assert (await ledger.balance(funded)).available == 100

    async def test_hold_resolves_at_most_once(self, ledger: Ledger, funded: str) -> None:
        """After a capture, another capture or a release is HoldAlreadyResolved."""
        hold = await ledger.place_hold(
            funded, 10, purpose="chat", reference="r", idempotency_key="h"
        )
        await ledger.capture_hold(funded, hold.hold, 10, idempotency_key="c1")
        with pytest.raises(HoldAlreadyResolved):
            await ledger.capture_hold(funded, hold.hold, 10, idempotency_key="c2")
        with pytest.raises(HoldAlreadyResolved):
            await ledger.release_hold(funded, hold.hold, reason="failed", idempotency_key="r1")

    async def test_unknown_hold_and_overcapture(self, ledger: Ledger, funded: str) -> None:
        """Capturing a hold that never existed, or more than it holds, is refused."""
        with pytest.raises(HoldNotFound):
            await ledger.capture_hold(funded, f"{funded}:999", 1, idempotency_key="x")
        with pytest.raises(HoldNotFound):  # a real event that is not a hold
            await ledger.capture_hold(funded, f"{funded}:1", 1, idempotency_key="y")
        hold = await ledger.place_hold(
            funded, 10, purpose="chat", reference="r", idempotency_key="h"
        )
        with pytest.raises(CaptureExceedsHold):
            await ledger.capture_hold(funded, hold.hold, 11, idempotency_key="c")

    async def test_expired_hold_cannot_be_captured_and_is_swept(
        self, ledger: Ledger, funded: str, clock: ManualClock
    ) -> None:
        """Past its expiry a hold refuses capture; the sweeper releases it exactly once."""
        hold = await ledger.place_hold(
            funded, 40, ttl_s=30, purpose="chat", reference="r", idempotency_key="h"
        )
        clock.advance(31)
        with pytest.raises(HoldExpired):
            await ledger.capture_hold(funded, hold.hold, 40, idempotency_key="late")
        assert (await ledger.balance(funded)).held == 40
        assert await ledger.sweep_expired_holds() == 1
        assert await ledger.sweep_expired_holds() == 0
        balance = await ledger.balance(funded)
        assert (balance.held, balance.available) == (0, 1000)
        page = await ledger.history(funded, limit=1)
        assert (page.entries[0].event_type, page.entries[0].reason) == ("hold_released", "expired")

    async def test_sweep_leaves_unexpired_holds(
        self, ledger: Ledger, funded: str, clock: ManualClock
    ) -> None:
        """Only holds whose expiry has passed are released by a sweep."""
        await ledger.place_hold(
            funded, 5, ttl_s=10, purpose="p", reference="a", idempotency_key="a"
        )
        await ledger.place_hold(
            funded, 6, ttl_s=100, purpose="p", reference="b", idempotency_key="b"
        )
        assert await ledger.sweep_expired_holds(clock.now + timedelta(seconds=50)) == 1
        assert (await ledger.balance(funded)).held == 6

    async def test_refund_never_exceeds_what_was_taken(self, ledger: Ledger, funded: str) -> None:
        """Refunds of a charge add up to at most the charge; other events cannot be refunded."""
        charge = await ledger.charge(funded, 100, idempotency_key="ch")
        await ledger.refund(funded, charge.event_id, 60, reason="bad answer", idempotency_key="r1")
        with pytest.raises(RefundExceedsTaken):
            await ledger.refund(funded, charge.event_id, 41, reason="again", idempotency_key="r2")
        receipt = await ledger.refund(
            funded, charge.event_id, 40, reason="rest", idempotency_key="r3"
        )
        assert receipt.balance.posted == 1000
        with pytest.raises(RefundTargetInvalid):
            await ledger.refund(funded, f"{funded}:1", 1, reason="grant", idempotency_key="r4")
        with pytest.raises(RefundTargetInvalid):
            await ledger.refund(funded, "nonsense", 1, reason="x", idempotency_key="r5")

    async def test_refund_of_a_capture(self, ledger: Ledger, funded: str) -> None:
        """A capture can be refunded up to the captured amount (not the hold amount)."""
        hold = await ledger.place_hold(funded, 50, purpose="p", reference="r", idempotency_key="h")
        capture = await ledger.capture_hold(funded, hold.hold, 20, idempotency_key="c")
        with pytest.raises(RefundExceedsTaken):
            await ledger.refund(funded, capture.event_id, 21, reason="x", idempotency_key="r1")
        receipt = await ledger.refund(
            funded, capture.event_id, 20, reason="x", idempotency_key="r2"
        )
        assert receipt.balance.posted == 1000

    async def test_active_holds_are_bounded(
        self, ledger: Ledger, funded: str, settings: LedgerSettings
    ) -> None:
        """An account cannot have more than max_active_holds_per_account unresolved holds."""
        for n in range(settings.max_active_holds_per_account):
            await ledger.place_hold(funded, 1, purpose="p", reference="r", idempotency_key=f"h{n}")
        with pytest.raises(TooManyActiveHolds):
            await ledger.place_hold(
                funded, 1, purpose="p", reference="r", idempotency_key="one-more"
            )

    @pytest.mark.parametrize("amount", [0, -5, 1.5, True, "10", 10**13])
    async def test_bad_amounts_are_rejected(
        self, ledger: Ledger, funded: str, amount: object
    ) -> None:
        """Amounts must be positive integers below the configured maximum."""
        with pytest.raises(InvalidAmount):
            await ledger.charge(funded, amount, idempotency_key="k")  # type: ignore[arg-type]

    async def test_bad_arguments_are_rejected(self, ledger: Ledger, funded: str) -> None:
        """Unknown reasons, both ttl and expiry, empty keys, bad metadata: InvalidArgument."""
        hold = await ledger.place_hold(funded, 1, purpose="p", reference="r", idempotency_key="h")
        with pytest.raises(InvalidArgument):
            await ledger.release_hold(funded, hold.hold, reason="bored", idempotency_key="r")
        with pytest.raises(InvalidArgument):
            await ledger.place_hold(
                funded,
                1,
                ttl_s=5,
                expires_at=ledger_now(),
                purpose="p",
                reference="r",
                idempotency_key="x",
            )
        with pytest.raises(InvalidArgument):
            await ledger.charge(funded, 1, idempotency_key="")
        with pytest.raises(InvalidArgument):
            await ledger.charge(funded, 1, idempotency_key="m", metadata={"model": 1.5})  # type: ignore[dict-item]
        with pytest.raises(InvalidArgument):
            await ledger.place_hold(
                funded, 1, ttl_s=10**9, purpose="p", reference="r", idempotency_key="long"
            )


def ledger_now() -> object:
    from datetime import UTC, datetime

    return datetime.now(UTC) + timedelta(seconds=60)


class TestIdempotency:
    async def test_retry_returns_the_original_receipt(self, ledger: Ledger, funded: str) -> None:
        """Same key and parameters: the first receipt again, marked replayed, no new event."""
        first = await ledger.charge(funded, 10, idempotency_key="once")
        again = await ledger.charge(funded, 10, idempotency_key="once")
        assert again.replayed and not first.replayed
        assert (again.event_id, again.balance) == (first.event_id, first.balance)
        assert (await ledger.balance(funded)).posted == 990

    async def test_same_key_other_parameters_conflicts(self, ledger: Ledger, funded: str) -> None:
        """Same key with a different amount is an IdempotencyConflict."""
        await ledger.charge(funded, 10, idempotency_key="once")
        with pytest.raises(IdempotencyConflict):
            await ledger.charge(funded, 11, idempotency_key="once")

    async def test_retry_of_a_refusal_returns_the_refusal(
        self, ledger: Ledger, funded: str
    ) -> None:
        """A refused key stays refused even after the account could afford it."""
        with pytest.raises(InsufficientCredits):
            await ledger.charge(funded, 5_000, idempotency_key="big")
        await ledger.add_credits(funded, 10_000, source="topup", idempotency_key="topup")
        with pytest.raises(InsufficientCredits) as again:
            await ledger.charge(funded, 5_000, idempotency_key="big")
        assert again.value.balance == 1000
        assert await count_rows(ledger, commands) == 1

    async def test_hold_retry_with_ttl_matches_later(
        self, ledger: Ledger, funded: str, clock: ManualClock
    ) -> None:
        """A hold retried later with the same ttl is a replay (the ttl, not the expiry, counts)."""
        first = await ledger.place_hold(
            funded, 5, ttl_s=60, purpose="p", reference="r", idempotency_key="h"
        )
        clock.advance(5)
        again = await ledger.place_hold(
            funded, 5, ttl_s=60, purpose="p", reference="r", idempotency_key="h"
        )
        assert again.replayed and again.hold_id == first.hold_id

    async def test_keys_are_scoped_per_account(self, ledger: Ledger, funded: str) -> None:
        """The same key on two accounts is two independent commands."""
        other = await ledger.open_account("bob")
        await ledger.add_credits(other, 5, source="grant", idempotency_key="seed")
        assert (await ledger.balance(other)).posted == 5


class TestReads:
    async def test_history_pages_newest_first_with_balances(
        self, ledger: Ledger, funded: str
    ) -> None:
        """Pages follow the cursor back to the first event; entries carry balances after."""
        for n in range(5):
            await ledger.charge(funded, n + 1, idempotency_key=f"c{n}", metadata={"model": "m"})
        seen = []
        cursor = None
        while True:
            page = await ledger.history(funded, cursor=cursor, limit=2)
            seen.extend(page.entries)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert [e.sequence for e in seen] == [6, 5, 4, 3, 2, 1]
        assert seen[0].posted_after == 1000 - 15 and seen[0].available_after == 985
        assert seen[0].metadata == {"model": "m"}

    async def test_history_filters(self, ledger: Ledger, funded: str, clock: ManualClock) -> None:
        """types, since and until select events; bad limits and cursors are refused."""
        start = clock.now
        clock.advance(10)
        await ledger.charge(funded, 1, idempotency_key="c")
        hold = await ledger.place_hold(funded, 2, purpose="p", reference="r", idempotency_key="h")
        charges = await ledger.history(funded, types=["charged"])
        assert [e.event_type for e in charges.entries] == ["charged"]
        late = await ledger.history(funded, since=start + timedelta(seconds=5))
        assert {e.event_id for e in late.entries} == {f"{funded}:2", hold.event_id}
        early = await ledger.history(funded, until=start + timedelta(seconds=5))
        assert [e.event_type for e in early.entries] == ["credits_added"]
        bad_cursors = ["abc", "-5", "\u00b2", "\u0661\u0662", "9" * 30, "", "0", "007", 7]
        for bad in (
            {"limit": 0},
            {"limit": 201},
            {"types": ["nope"]},
            *({"cursor": cursor} for cursor in bad_cursors),
        ):
            with pytest.raises(InvalidArgument):
                await ledger.history(funded, **bad)  # type: ignore[arg-type]

    async def test_totals_obey_conservation(self, ledger: Ledger, funded: str) -> None:
        """posted = issued - captured - charged + refunded; outstanding = open holds."""
        hold = await ledger.place_hold(funded, 100, purpose="p", reference="r", idempotency_key="h")
        await ledger.capture_hold(funded, hold.hold, 30, idempotency_key="c")
        charge = await ledger.charge(funded, 50, idempotency_key="ch")
        await ledger.refund(funded, charge.event_id, 5, reason="x", idempotency_key="rf")
        await ledger.place_hold(funded, 7, purpose="p", reference="r", idempotency_key="h2")
        totals = await ledger.totals(funded)
        assert (totals.issued, totals.captured, totals.charged, totals.refunded) == (
            1000,
            30,
            50,
            5,
        )
        assert (totals.released, totals.outstanding_holds) == (70, 7)
        assert totals.posted == (await ledger.balance(funded)).posted == 925
        assert (await ledger.totals()).issued == 1000

    async def test_snapshots_are_written_and_balance_uses_them(
        self, ledger: Ledger, funded: str, settings: LedgerSettings
    ) -> None:
        """Every snapshot_every events a snapshot row appears and matches replay (audit)."""
        for n in range(10):
            await ledger.charge(funded, 1, idempotency_key=f"c{n}")
        # 11 events: snapshots at 0 (opening), 4 and 8.
        assert await count_rows(ledger, snapshots) == 1 + 11 // settings.snapshot_every
        assert (await ledger.balance(funded)).posted == 990
        report = await ledger.audit(funded)
        assert report.clean, report.violations
        assert report.accounts[0].snapshots_checked == 3

    async def test_state_survives_reopen(
        self, database_url: str, settings: LedgerSettings, clock: ManualClock
    ) -> None:
        """Closing and reopening the ledger keeps balances, holds and idempotency."""
        first = await Ledger.open(database_url, settings=settings, clock=clock)
        account = await first.open_account("alice")
        await first.add_credits(account, 100, source="grant", idempotency_key="seed")
        hold = await first.place_hold(account, 30, purpose="p", reference="r", idempotency_key="h")
        await first.close()
        second = await Ledger.open(database_url, settings=settings, clock=clock)
        try:
            assert (await second.balance(account)).held == 30
            again = await second.place_hold(
                account, 30, purpose="p", reference="r", idempotency_key="h"
            )
            assert again.replayed and again.hold_id == hold.hold_id
            await second.capture_hold(account, hold.hold, 30, idempotency_key="c")
            assert (await second.balance(account)).posted == 70
        finally:
            await second.close()


class TestSchema:
    async def test_migrations_create_exactly_the_declared_tables(self, ledger: Ledger) -> None:
        """Alembic's autogenerate finds nothing between the migrated database and schema.py,
        and the ledger keeps its own version table."""
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext
        from sqlalchemy import inspect

        from ledger.storage.schema import VERSION_TABLE, metadata

        def differences(connection: object) -> list[object]:
            context = MigrationContext.configure(
                connection,  # type: ignore[arg-type]
                opts={"version_table": VERSION_TABLE},
            )
            return list(compare_metadata(context, metadata))

        def tables(connection: object) -> set[str]:
            return set(inspect(connection).get_table_names())

        async with ledger.store.engines.read.connect() as connection:
            assert await connection.run_sync(differences) == []
            assert VERSION_TABLE in await connection.run_sync(tables)
