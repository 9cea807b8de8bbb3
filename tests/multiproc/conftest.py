"""Fixtures of the multi-process tests: the session's tiny-model engine (tests/remote), a fresh
PostgreSQL database and three `ledgerchat serve` processes behind nginx for this package.
Everything here starts real processes: marked `live`, `slow` and `postgres`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import debian
from tests.multiproc.cluster import NGINX, Cluster, create_database, drop_database, start_cluster
from tests.multiproc.redis_server import REDIS_SERVER, RedisServer, start_redis
from tests.remote.upstreams import Upstream, engine_upstream, tiny_gemma_dir

__all__ = ["engine_upstream", "tiny_gemma_dir"]

WORKERS = 3
HOLD_TTL_S = "20"
"""Short, so the sweeper releases a killed process's holds within the test."""
CHATS_PER_MINUTE = 8
"""Every user's chat rate limit (counted in Redis across the processes)."""
GRANT = 12
"""Each new user's credits: enough for some of a user's chats, not all."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/multiproc/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.live)
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="package")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """This package's own redis-server (the Redis-down test stops and restarts it)."""
    debian.require("redis-server", Path(REDIS_SERVER))
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def cluster(
    redis_server: RedisServer,
    engine_upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_unavailable_reason: str | None,
) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("multiproc"),
        engine_upstream,
        redis_server,
        postgres_unavailable_reason,
        LEDGERCHAT_RATE_LIMIT_CHAT_PER_USER_PER_MINUTE=str(CHATS_PER_MINUTE),
        LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS=str(GRANT),
        LEDGERCHAT_BILLING_HOLD_TTL_S=HOLD_TTL_S,
        LEDGERCHAT_BILLING_SWEEP_INTERVAL_S="1",
    ) as started:
        yield started


@contextmanager
def running_cluster(
    folder: Path,
    upstream: Upstream,
    redis_server: RedisServer,
    postgres_unavailable_reason: str | None,
    **environ: str,
) -> Iterator[Cluster]:
    """`WORKERS` web processes behind nginx on a fresh PostgreSQL database (dropped after),
    reaching `upstream`; nginx is installed from Debian's packages when missing (tests/debian.py),
    and the test is skipped when PostgreSQL is missing."""
    if postgres_unavailable_reason is not None:
        debian.skip_or_fail(postgres_unavailable_reason)
    debian.require("nginx", Path(NGINX))
    name, url = create_database()
    try:
        started = start_cluster(folder, upstream, url, redis_server.url, WORKERS, **environ)
        try:
            yield started
        finally:
            started.stop()
    finally:
        drop_database(name)
