"""Redis for the multi-process tests: the machine's server on 127.0.0.1:6379 under a key prefix
of the test's own (its keys deleted afterwards), or a private `redis-server` on a free port that
a test can stop (the "Redis went away" cases)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis import Redis
from redis.exceptions import RedisError

from tests.web.web_testing import free_port

SHARED_REDIS_URL = os.environ.get("LEDGERCHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START_TIMEOUT_S = 20.0


def _reachable(url: str) -> str | None:
    try:
        Redis.from_url(url, socket_connect_timeout=2).ping()
    except RedisError as exc:
        return f"Redis at {url} is not reachable: {exc!r}"
    return None


@pytest.fixture
def redis_env() -> Iterator[dict[str, str]]:
    """LEDGERCHAT_REDIS_* of the shared server with a prefix unique to this test."""
    reason = _reachable(SHARED_REDIS_URL)
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires Redis: {reason}")
        pytest.skip(reason)
    prefix = f"ledgerchat-test-{uuid.uuid4().hex[:12]}:"
    yield {"LEDGERCHAT_REDIS_URL": SHARED_REDIS_URL, "LEDGERCHAT_REDIS_KEY_PREFIX": prefix}
    client = Redis.from_url(SHARED_REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    keys += list(client.scan_iter(match=f"{prefix}limits*"))
    if keys:
        client.delete(*keys)


class PrivateRedis:
    """A `redis-server --save ''` on a free loopback port, stopped by `stop()` or at the end."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while _reachable(self.url) is not None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        yield server
    finally:
        server.stop()
