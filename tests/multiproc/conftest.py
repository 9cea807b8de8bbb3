"""Fixtures of the multi-process tests: the session's tiny-model engine (tests/remote), a fresh
PostgreSQL database and three `ledgerchat serve` processes behind nginx for this package.
Everything here starts real processes: marked `live`, `slow` and `postgres`."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.multiproc.cluster import NGINX, Cluster, create_database, drop_database, start_cluster
from tests.remote.upstreams import Upstream, engine_upstream, tiny_gemma_dir

__all__ = ["engine_upstream", "tiny_gemma_dir"]

WORKERS = 3
HOLD_TTL_S = "20"
"""Short, so the sweeper releases a killed process's holds within the test."""
GRANT = 12
"""Each new user's credits: enough for some of a user's chats, not all."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/multiproc/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.live)
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="package")
def cluster(
    engine_upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_unavailable_reason: str | None,
) -> Iterator[Cluster]:
    if postgres_unavailable_reason is not None:
        pytest.skip(postgres_unavailable_reason)
    if shutil.which(NGINX) is None and not Path(NGINX).exists():
        pytest.skip("nginx is not installed (Debian: apt-get install nginx)")
    name, url = create_database()
    try:
        started = start_cluster(
            tmp_path_factory.mktemp("multiproc"),
            engine_upstream,
            url,
            WORKERS,
            LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS=str(GRANT),
            LEDGERCHAT_BILLING_HOLD_TTL_S=HOLD_TTL_S,
            LEDGERCHAT_BILLING_SWEEP_INTERVAL_S="1",
        )
        try:
            yield started
        finally:
            started.stop()
    finally:
        drop_database(name)
