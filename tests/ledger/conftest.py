"""Fixtures of the ledger tests: a manual clock and an open ledger on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from ledger import Ledger, LedgerSettings
from ledger.clock import ManualClock

LEDGER_TESTS = Path(__file__).parent
SLOW_TESTS = ("test_ledger_properties.py", "TestProcesses")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark this package's PostgreSQL cases `postgres` and its long tests `slow`, so that
    `-m "not postgres"` or `-m "not slow"` select as the registered markers promise."""
    for item in items:
        if LEDGER_TESTS not in item.path.parents:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_backend") == "postgres":
            item.add_marker(pytest.mark.postgres)
        if any(name in item.nodeid for name in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    """Tests that capture logs reconfigure structlog; every test starts from the defaults."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings() -> LedgerSettings:
    # Small snapshot interval so ordinary tests cross several snapshots; no background sweeper
    # (tests sweep explicitly with a controlled clock).
    return LedgerSettings(snapshot_every=4, sweep_interval_s=0, max_active_holds_per_account=8)


@pytest.fixture
async def ledger(
    database_url: str, settings: LedgerSettings, clock: ManualClock
) -> AsyncIterator[Ledger]:
    opened = await Ledger.open(database_url, settings=settings, clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def funded(ledger: Ledger) -> str:
    """An account of owner 'alice' holding 1,000 credits."""
    account_id = await ledger.open_account("alice")
    await ledger.add_credits(account_id, 1_000, source="grant", idempotency_key="seed")
    return account_id
