"""Fixtures shared by every test package: database URLs for both storage backends.

`sqlite_url` is a fresh SQLite file per test. `postgres_url` is a fresh PostgreSQL database per
test on the server at 127.0.0.1:5432 (trust auth, database `test` used only to create and drop
the per-test databases). Without a reachable server those tests skip with the reason, except
under CI=true, where a missing server is a failure: CI must run the PostgreSQL suite.

Tests that start a real server (a uvicorn thread or a `ledgerchat serve` process) carry the
`live` marker: `pytest -m "not live"` runs the fast, service-level tier (docs/architecture.md,
"Testing"). The marker is applied here from the fixtures a test uses; modules that start
servers themselves set it with `pytestmark`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# Fixtures that start a real server; a test using any of them (even indirectly) is `live`.
LIVE_SERVER_FIXTURES = frozenset({"server", "make_server", "live_server", "schema_server"})

POSTGRES_ADMIN_DSN = os.environ.get(
    "LEDGERCHAT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


def _postgres_reachable() -> str | None:
    """Return None when the server answers, else the reason it does not."""
    import asyncpg

    async def probe() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=3)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # any failure to connect is a reason to skip
        return f"PostgreSQL at {POSTGRES_ADMIN_DSN} is not reachable: {exc!r}"
    return None


@pytest.fixture(scope="session")
def postgres_unavailable_reason() -> str | None:
    return _postgres_reachable()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'ledgerchat.db'}"


@pytest.fixture
async def postgres_url(postgres_unavailable_reason: str | None) -> AsyncIterator[str]:
    if postgres_unavailable_reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires PostgreSQL: {postgres_unavailable_reason}")
        pytest.skip(postgres_unavailable_reason)
    import asyncpg

    name = f"ledgerchat_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Parametrises a test over both backends; pair it with `database_url`."""
    yield str(request.param)


@pytest.fixture
def database_url(database_backend: str, request: pytest.FixtureRequest) -> str:
    """A fresh database of the backend chosen by `database_backend`."""
    if database_backend == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    """Tests that run the CLI in-process configure structlog and the root logger for the whole
    process; put both back so later tests see the library defaults (and capture_logs works)."""
    import logging

    import structlog

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if LIVE_SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.live)
