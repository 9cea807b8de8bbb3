"""Per-user chat concurrency: at most LEDGERCHAT_CHAT_MAX_CONCURRENT_PER_USER chats streaming
at once per user, over every web process.

With Redis each running chat holds a *lease*: a member of the sorted set
`<prefix>chat-slots:<user id>` scored with its expiry (Redis's own clock, so hosts' clocks do
not matter). Taking a slot is one Lua script, atomic in Redis: drop the user's expired leases,
count the rest, add this one if the count is under the limit. The process that holds a lease
renews every lease it holds every third of LEDGERCHAT_REDIS_LEASE_TTL_S, and removes it when
the chat settles; a process that crashes stops renewing, so its slots are free again at most
one lease lifetime later (never leaked for good). A lease is renewed for at most the hold's
lifetime (no chat outlives its hold), so a slot lost by a bug expires too. `limits` counts
rates, not things held and given back, so the lease is this script on redis-py.

Without Redis only one web process runs, and an in-memory count is exact (a crash takes the
count with it). Redis configured but unreachable: the chat is refused (`LimitsUnavailable`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

from redis.asyncio import Redis
from redis.exceptions import RedisError

from web.errors import LimitsUnavailable, TooManyChats
from web.logging import get_logger
from web.settings import RedisSettings

log = get_logger(__name__)
TOO_MANY_CHATS_RETRY_AFTER_S = 2

# KEYS[1] the user's set; ARGV: limit, lease id, ttl in ms. Returns 1 (taken) or 0 (full).
ACQUIRE_SCRIPT = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# KEYS[1] the user's set; ARGV: lease id, ttl in ms. Returns 1 (renewed) or 0 (lease gone).
RENEW_SCRIPT = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return renewed
"""


def redis_client(settings: RedisSettings) -> Redis:
    """A client for `settings.url` whose calls give up after `timeout_s`."""
    return Redis.from_url(
        settings.url,
        socket_timeout=settings.timeout_s,
        socket_connect_timeout=settings.timeout_s,
    )


def unavailable(settings: RedisSettings, exc: Exception) -> LimitsUnavailable:
    retry_after_s = settings.unavailable_retry_after_s
    log.error("chat_slots_unavailable", error=f"{type(exc).__name__}: {exc}")
    return LimitsUnavailable(
        "the service cannot check its limits right now (Redis does not answer); nothing was "
        f"charged: retry in {retry_after_s} seconds",
        retry_after_s=retry_after_s,
    )


class ChatSlot:
    """One chat's slot; `release()` gives it back (once; later calls do nothing)."""

    def __init__(self, slots: ChatSlots, user_id: str, lease_id: str) -> None:
        self._slots = slots
        self.user_id = user_id
        self.lease_id = lease_id
        self.taken_at = time.monotonic()
        self.released = False

    def release(self) -> None:
        """Give the slot back in the background (callable from a done-callback)."""
        if self.released:
            return
        self.released = True
        self._slots.give_back(self)


class ChatSlots:
    """The slots of one web process: counted in Redis when `redis` is given, else here."""

    def __init__(
        self,
        limit: int,
        settings: RedisSettings,
        redis: Redis | None,
        *,
        max_lease_lifetime_s: float,
    ) -> None:
        if limit <= 0:
            raise ValueError(f"max concurrent chats must be positive, got {limit}")
        self.limit = limit
        self._settings = settings
        self._redis = redis
        self._ttl_ms = settings.lease_ttl_s * 1000
        self._max_lifetime_s = max_lease_lifetime_s
        self._held: dict[str, ChatSlot] = {}
        self._in_memory: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def renew_interval_s(self) -> float:
        return self._settings.lease_ttl_s / 3

    def _key(self, user_id: str) -> str:
        return f"{self._settings.key_prefix}chat-slots:{user_id}"

    async def acquire(self, user_id: str) -> ChatSlot:
        """A slot for one more chat of `user_id`; TooManyChats (429) when all are taken,
        LimitsUnavailable (503) when Redis is configured and does not answer."""
        slot = ChatSlot(self, user_id, uuid.uuid4().hex)
        if self._redis is None:
            taken = self._in_memory[user_id] < self.limit
            if taken:
                self._in_memory[user_id] += 1
        else:
            try:
                result = await self._redis.eval(  # type: ignore[misc]
                    ACQUIRE_SCRIPT, 1, self._key(user_id), self.limit, slot.lease_id, self._ttl_ms
                )
            except RedisError as exc:
                raise unavailable(self._settings, exc) from exc
            taken = int(result) == 1
        if not taken:
            raise TooManyChats(
                f"at most {self.limit} chats at once per user; wait for one to finish",
                retry_after_s=TOO_MANY_CHATS_RETRY_AFTER_S,
            )
        self._held[slot.lease_id] = slot
        return slot

    def give_back(self, slot: ChatSlot) -> None:
        self._held.pop(slot.lease_id, None)
        if self._redis is None:
            self._in_memory[slot.user_id] -= 1
            if self._in_memory[slot.user_id] <= 0:
                del self._in_memory[slot.user_id]
            return
        task = asyncio.get_running_loop().create_task(self._remove(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(self, slot: ChatSlot) -> None:
        assert self._redis is not None
        try:
            await self._redis.zrem(self._key(slot.user_id), slot.lease_id)
        except RedisError as exc:  # the lease expires by itself
            log.warning("chat_slot_release_failed", error=str(exc))

    async def renew(self) -> None:
        """Renew every lease this process holds (the background job, every third of the lease
        lifetime); leases older than the hold lifetime are dropped instead."""
        if self._redis is None:
            return
        now = time.monotonic()
        for slot in list(self._held.values()):
            if now - slot.taken_at > self._max_lifetime_s:
                log.warning("chat_slot_outlived_hold", user_id=slot.user_id)
                slot.release()
                continue
            try:
                renewed = await self._redis.eval(  # type: ignore[misc]
                    RENEW_SCRIPT, 1, self._key(slot.user_id), slot.lease_id, self._ttl_ms
                )
            except RedisError as exc:
                log.warning("chat_slot_renew_failed", error=str(exc))
                return
            if int(renewed) == 0 and slot.lease_id in self._held:
                log.warning("chat_slot_lease_lost", user_id=slot.user_id)

    @property
    def held(self) -> int:
        return len(self._held)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
