"""The web engine's ping of idle pooled PostgreSQL connections (`web.database`): a pooled
connection that died while idle is replaced at checkout, and one used just now is not pinged."""

from __future__ import annotations

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import POSTGRES_ADMIN_DSN
from web.database import _ping_idle_connections


async def _backend_pid(engine: object) -> int:
    async with engine.connect() as connection:  # type: ignore[attr-defined]
        return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _terminate(pid: int) -> None:
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def test_a_dead_idle_connection_is_replaced_at_checkout(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url, pool_size=1, max_overflow=0)
    # idle_s below zero: every pooled connection counts as idle, so the test needs no clock.
    _ping_idle_connections(engine, idle_s=-1.0)
    try:
        first = await _backend_pid(engine)
        await _terminate(first)
        second = await _backend_pid(engine)  # would raise if the dead one were handed out
        assert second != first
    finally:
        await engine.dispose()


async def test_a_connection_used_just_now_is_not_pinged(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url, pool_size=1, max_overflow=0)
    _ping_idle_connections(engine, idle_s=3600.0)
    pings = 0
    ping = engine.dialect.do_ping

    def counted_ping(dbapi_connection: object) -> bool:
        nonlocal pings
        pings += 1
        return ping(dbapi_connection)  # type: ignore[arg-type]

    engine.dialect.do_ping = counted_ping  # type: ignore[method-assign]
    try:
        first = await _backend_pid(engine)
        assert await _backend_pid(engine) == first
        assert pings == 0
    finally:
        await engine.dispose()
