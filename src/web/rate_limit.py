"""Request rate limits, counted by the kept `limits` library in fixed one-minute windows (a
window starts at its key's first hit): in Redis when LEDGERCHAT_REDIS_URL is set, so every web
process counts the same hits, else in this process's memory (then `serve --workers` refuses to
run more than one process, since each would count only its own share).

Redis configured but unreachable: a limiter built `fail_closed` (the chat limit) raises
`LimitsUnavailable` (503 with Retry-After), so no chat runs without its limit; the request
limits (per address, per user) count in this process's memory meanwhile: still limited, at
most N times the limit over N processes, never unlimited, and logged.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError

from web.errors import LimitsUnavailable
from web.logging import get_logger
from web.settings import RedisSettings

log = get_logger(__name__)
WINDOW_S = 60


def redis_storage_uri(url: str) -> str:
    """`limits`' name of the asyncio Redis storage at `url` (redis:// or rediss://)."""
    return f"async+{url}"


class LimitStores:
    """Where limits are counted: `shared` (Redis, None when not configured) and this process's
    `memory`, which counts everything without Redis and the request limits while Redis is
    unreachable. `max_memory_keys` bounds the memory store: past it, its counts start over."""

    def __init__(self, redis: RedisSettings, *, max_memory_keys: int) -> None:
        self.memory = MemoryStorage()
        self.max_memory_keys = max_memory_keys
        self.unavailable_retry_after_s = redis.unavailable_retry_after_s
        self.shared: Storage | None = None
        if redis.url:
            self.shared = RedisStorage(
                redis_storage_uri(redis.url),
                implementation="redispy",
                key_prefix=f"{redis.key_prefix}limits",
                wrap_exceptions=True,
                socket_timeout=redis.timeout_s,
                socket_connect_timeout=redis.timeout_s,
            )

    async def bound_memory(self) -> None:
        if len(self.memory.storage) >= self.max_memory_keys:
            log.warning("rate_limit_memory_reset", keys=len(self.memory.storage))
            await self.memory.reset()


class RateLimiter:
    """Allows `limit` hits per key per minute; `await hit(key)` returns 0, or the seconds until
    the key's window ends."""

    def __init__(self, limit: int, stores: LimitStores, *, fail_closed: bool = False) -> None:
        if limit <= 0:
            raise ValueError(f"a rate limit must be positive, got {limit}")
        self.item = RateLimitItemPerMinute(limit)
        self.stores = stores
        self.fail_closed = fail_closed

    @property
    def limit(self) -> int:
        return int(self.item.amount)

    async def hit(self, key: str) -> int:
        shared = self.stores.shared
        if shared is not None:
            try:
                return await self._hit(FixedWindowRateLimiter(shared), key)
            except StorageError as exc:
                if self.fail_closed:
                    retry_after_s = self.stores.unavailable_retry_after_s
                    log.error("rate_limit_unavailable", key=key.split(":", 1)[0], error=str(exc))
                    raise LimitsUnavailable(
                        "the service cannot check its limits right now (Redis does not "
                        f"answer); nothing was charged: retry in {retry_after_s} seconds",
                        retry_after_s=retry_after_s,
                    ) from exc
                log.warning("rate_limit_in_memory", reason=str(exc.storage_error))
        await self.stores.bound_memory()
        return await self._hit(FixedWindowRateLimiter(self.stores.memory), key)

    async def _hit(self, strategy: FixedWindowRateLimiter, key: str) -> int:
        if await strategy.hit(self.item, key):
            return 0
        reset_at, _ = await strategy.get_window_stats(self.item, key)
        return max(1, math.ceil(reset_at - time.time()))
