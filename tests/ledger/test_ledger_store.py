"""The `EventStore` contract, written once and run against each backend by subclassing (as
eventsourcing's tests/persistence.py does per recorder): `TestSqliteEventStore` and
`TestPostgresEventStore` pass the same tests against the store's own methods, below the writer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import pytest
from sqlalchemy import Connection, update
from sqlalchemy.exc import IntegrityError

from ledger import InsufficientCredits, LedgerSettings
from ledger.domain import (
    AccountState,
    Event,
    EventDraft,
    EventType,
    complete,
    event_id_of,
)
from ledger.errors import InvariantViolation
from ledger.storage import EventStore, PostgresEventStore, SqliteEventStore
from ledger.storage.database import create_engines, upgrade_schema
from ledger.storage.persistence import AccountHead, BatchWrite, Refusal
from ledger.storage.rows import event_from_row, event_to_row
from ledger.storage.schema import events

NOW_US = 1_800_000_000_000_000
FINGERPRINT = "f" * 64


def next_event(state: AccountState, draft: EventDraft, key: str) -> Event:
    """The account's next valid event (folded into `state`), as the writer would make it."""
    return complete(
        state, draft, idempotency_key=key, fingerprint=FINGERPRINT, recorded_at_us=NOW_US
    )


def head_of(state: AccountState) -> AccountHead:
    return AccountHead(state.account_id, state.owner_id, state.sequence, state.head_hash)


class EventStoreContract:
    """The tests every backend's store passes; subclasses give the store class and a
    `store_url` fixture (a fresh database of their backend)."""

    store_class: ClassVar[type[EventStore]]

    @pytest.fixture
    async def store(self, store_url: str) -> AsyncIterator[EventStore]:
        engines = create_engines(store_url, LedgerSettings())
        await upgrade_schema(engines)
        try:
            yield self.store_class(engines)
        finally:
            await engines.dispose()

    async def in_transaction(self, store: EventStore, work: Callable[..., Any], *args: Any) -> Any:
        """Run `work(connection, *args)` in one write transaction, as the writer does."""
        async with store.engines.write.begin() as connection:
            return await connection.run_sync(work, *args)

    async def funded_account(self, store: EventStore) -> tuple[AccountState, list[Event]]:
        """An account with credits of 500, a hold of 120 and a charge of 30, written."""
        account_id = await store.create_account("alice", is_default=True, now_us=NOW_US)
        state = AccountState(account_id, "alice")
        written = [
            next_event(
                state,
                EventDraft(EventType.CREDITS_ADDED, 500, source="grant", metadata={"n": 1}),
                "k1",
            ),
            next_event(
                state,
                EventDraft(
                    EventType.HOLD_PLACED,
                    120,
                    expires_at_us=NOW_US + 60_000_000,
                    purpose="chat",
                    reference="r",
                ),
                "k2",
            ),
            next_event(state, EventDraft(EventType.CHARGED, 30, metadata={"model": "m"}), "k3"),
        ]
        batch = BatchWrite(events=list(written), heads={account_id: head_of(state)})
        batch.holds_opened[event_id_of(account_id, 2)] = written[1]
        await self.in_transaction(store, store.write, batch)
        return state, written

    async def test_accounts(self, store: EventStore) -> None:
        """An owner's default account is found; extra accounts are listed after it."""
        default = await store.create_account("alice", is_default=True, now_us=NOW_US)
        extra = await store.create_account("alice", is_default=False, now_us=NOW_US + 1)
        assert await store.default_account("alice") == default
        assert await store.accounts_of("alice") == [default, extra]
        assert await store.account_owner(extra) == "alice"
        assert await store.account_owner("acct_missing") is None
        assert await store.default_account("bob") is None

    async def test_second_default_account_is_an_integrity_error(self, store: EventStore) -> None:
        """The unique default-per-owner index is what makes open_account idempotent."""
        await store.create_account("alice", is_default=True, now_us=NOW_US)
        with pytest.raises(IntegrityError):
            await store.create_account("alice", is_default=True, now_us=NOW_US)

    async def test_written_events_read_back_equal(self, store: EventStore) -> None:
        """Every field of every event survives the row mapping, through every read."""
        state, written = await self.funded_account(store)
        account_id = state.account_id
        history = await store.history(
            account_id, before_sequence=None, limit=10, types=None, since_us=None, until_us=None
        )
        assert history == written[::-1]
        assert [e async for e in store.stream_events(account_id)] == written
        at = await self.in_transaction(store, store.event_at, account_id, 2)
        assert at == written[1]
        assert await self.in_transaction(store, store.event_at, account_id, 9) is None
        assert await store.read_state(account_id) == state
        assert await store.read_state("acct_missing") is None

    async def test_sums_heads_and_hold_index(self, store: EventStore) -> None:
        """Sums per type, locked heads of existing accounts only, expired holds by time."""
        state, _ = await self.funded_account(store)
        account_id = state.account_id
        sums = await store.sums_by_type(account_id)
        assert sums == {"credits_added": (500, 0), "hold_placed": (120, 0), "charged": (30, 0)}
        heads = await self.in_transaction(store, store.lock_heads, [account_id, "acct_missing"])
        assert heads == {account_id: head_of(state)}
        assert await store.expired_holds(NOW_US, 10) == []
        hold_id = event_id_of(account_id, 2)
        assert await store.expired_holds(NOW_US + 60_000_000, 10) == [(account_id, hold_id)]

    async def test_outcomes_of_keys(self, store: EventStore) -> None:
        """Earlier events and refusals are found by (account, key); other keys are not."""
        state, written = await self.funded_account(store)
        account_id = state.account_id
        refusal = Refusal(account_id, "k4", FINGERPRINT, InsufficientCredits(470, 350, 999), 1)
        await self.in_transaction(store, store.write, BatchWrite(refusals=[refusal]))
        keys = [(account_id, "k1"), (account_id, "k4"), (account_id, "nope"), ("other", "k1")]
        found = await self.in_transaction(store, store.find_outcomes, keys)
        assert found[(account_id, "k1")] == written[0]
        stored = found[(account_id, "k4")]
        assert isinstance(stored, Refusal) and isinstance(stored.error, InsufficientCredits)
        assert stored.error.details == refusal.error.details
        assert set(found) == {(account_id, "k1"), (account_id, "k4")}

    async def test_duplicate_sequence_is_retryable(self, store: EventStore) -> None:
        """A second writer's event at a taken sequence violates the key and is retryable."""
        _, written = await self.funded_account(store)
        with pytest.raises(IntegrityError) as raised:
            await self.in_transaction(store, store.write, BatchWrite(events=[written[0]]))
        assert store.is_retryable(raised.value)

    async def test_write_refuses_an_event_that_breaks_an_invariant(self, store: EventStore) -> None:
        """Before writing: an event leaving available negative is an InvariantViolation and
        nothing of its batch is written."""
        state, written = await self.funded_account(store)
        bad = event_from_row_values({**event_to_row(written[2]), "sequence": 4, "held_after": 999})
        with pytest.raises(InvariantViolation):
            await self.in_transaction(store, store.write, BatchWrite(events=[bad]))
        assert await store.read_state(state.account_id) == state

    async def test_tampered_row_read_back_is_an_invariant_violation(
        self, store: EventStore
    ) -> None:
        """After reading: a stored event with a negative amount fails every checked read."""
        state, _ = await self.funded_account(store)
        account_id = state.account_id

        def tamper(connection: Connection) -> None:
            connection.execute(
                update(events)
                .where(events.c.account_id == account_id, events.c.sequence == 3)
                .values(amount=-30)
            )

        await self.in_transaction(store, tamper)
        with pytest.raises(InvariantViolation):
            await store.read_state(account_id)
        with pytest.raises(InvariantViolation):
            await self.in_transaction(store, store.event_at, account_id, 3)
        with pytest.raises(InvariantViolation):
            await store.history(
                account_id, before_sequence=None, limit=5, types=None, since_us=None, until_us=None
            )


def event_from_row_values(values: dict[str, Any]) -> Event:
    """An Event from column values (for building a row the rules would never produce)."""

    class Row:
        _mapping = values

    return event_from_row(Row())  # type: ignore[arg-type]


class TestSqliteEventStore(EventStoreContract):
    store_class = SqliteEventStore

    @pytest.fixture
    def store_url(self, sqlite_url: str) -> str:
        return sqlite_url


@pytest.mark.postgres
class TestPostgresEventStore(EventStoreContract):
    store_class = PostgresEventStore

    @pytest.fixture
    def store_url(self, postgres_url: str) -> str:
        return postgres_url
