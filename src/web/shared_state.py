"""What the web processes of one service count and check together (docs/deployment.md,
"Several web processes"): the rate limiters, the chat concurrency slots and this process's
registration of what it serves, all in Redis when LEDGERCHAT_REDIS_URL is set (else in
memory, one process only). Built once per `Services`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from inference.catalog import Catalog
from web.chat_slots import ChatSlots, redis_client
from web.domain.billing.prices import PriceCatalog
from web.instances import InstanceRegistry, ServedConfig
from web.rate_limit import LimitStores, RateLimiter
from web.settings import Settings


class SharedState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_client(settings.redis) if settings.redis.url else None
        rate_limit = settings.rate_limit
        stores = LimitStores(settings.redis, max_memory_keys=rate_limit.max_tracked_clients)
        self.user_limiter = RateLimiter(rate_limit.per_user_per_minute, stores)
        self.address_limiter = RateLimiter(rate_limit.per_address_per_minute, stores)
        # A chat never runs unlimited: with Redis unreachable it is refused (503).
        self.chat_limiter = RateLimiter(
            rate_limit.chat_per_user_per_minute, stores, fail_closed=True
        )
        self.chat_slots = ChatSlots(
            settings.chat.max_concurrent_per_user,
            settings.redis,
            self.redis,
            max_lease_lifetime_s=settings.billing.hold_ttl_s,
        )
        self.instances: InstanceRegistry | None = None

    async def join(self, catalog: Catalog, prices: PriceCatalog) -> None:
        """With Redis, register what this process serves; ServedConfigMismatch when a running
        process serves other prices, catalog or signing secret (web.instances)."""
        if self.redis is None:
            return
        served = ServedConfig.of(catalog, prices, self.settings.auth.jwt_secret)
        registry = InstanceRegistry(self.redis, self.settings.redis, served)
        await registry.join()
        self.instances = registry

    def renewals(self) -> list[tuple[str, float, Callable[[], Awaitable[None]]]]:
        """The background jobs that keep this process's leases alive: (name, interval, job)."""
        jobs: list[tuple[str, float, Callable[[], Awaitable[None]]]] = [
            ("renew_chat_slots", self.chat_slots.renew_interval_s, self.chat_slots.renew)
        ]
        if self.instances is not None:
            jobs.append(("renew_instance", self.instances.renew_interval_s, self.instances.renew))
        return jobs

    async def close(self) -> None:
        await self.chat_slots.close()
        if self.instances is not None:
            await self.instances.leave()
            self.instances = None
        if self.redis is not None:
            await self.redis.aclose()
