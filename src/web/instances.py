"""Web processes that serve as one service must serve the same thing: the same prices, the same
model catalog and the same signing secret. With Redis each serving process registers what it
serves (a fingerprint of each, never the secret itself) under `<prefix>instances:<id>` with an
expiry it renews (LEDGERCHAT_REDIS_LEASE_TTL_S); a process that starts while a live process
serves something else refuses to start and names what differs. To change prices, stop every
process, then start them all (a crashed process's record expires after one lease lifetime).
Without Redis only one process runs, so there is nothing to compare with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

from inference.catalog import Catalog
from web.domain.billing.prices import PriceCatalog
from web.logging import get_logger
from web.settings import RedisSettings

log = get_logger(__name__)
SCAN_COUNT = 100


class ServedConfigMismatch(Exception):
    """This process would serve other prices, catalog or secret than the running ones."""


class RegistryUnavailable(Exception):
    """Redis is configured but does not answer at start."""


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ServedConfig:
    """Fingerprints of what one process serves."""

    price_version: str
    catalog: str
    signing_secret: str

    @classmethod
    def of(cls, catalog: Catalog, prices: PriceCatalog, secret: str) -> ServedConfig:
        ids = sorted(catalog.ids())
        versions = {model_id: prices.get(model_id).version for model_id in ids} if ids else {}
        entries = {entry.id: entry.source.describe() for entry in catalog}
        return cls(
            price_version=_digest(versions),
            catalog=_digest(entries),
            signing_secret=hashlib.sha256(secret.encode()).hexdigest()[:16],
        )

    def differences(self, other: ServedConfig) -> list[str]:
        names = {
            "price_version": "prices (price version)",
            "catalog": "model catalog",
            "signing_secret": "signing secret (LEDGERCHAT_AUTH_JWT_SECRET or data_dir/jwt-secret)",
        }
        return [
            f"{names[field]}: this process {getattr(self, field)}, running {getattr(other, field)}"
            for field in names
            if getattr(self, field) != getattr(other, field)
        ]


class InstanceRegistry:
    """This process's record in Redis, renewed by a background job."""

    def __init__(self, redis: Redis, settings: RedisSettings, served: ServedConfig) -> None:
        self._redis = redis
        self._settings = settings
        self.served = served
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def _key(self, instance_id: str) -> str:
        return f"{self._settings.key_prefix}instances:{instance_id}"

    @property
    def renew_interval_s(self) -> float:
        return self._settings.lease_ttl_s / 3

    async def join(self) -> None:
        """Register, then compare with every other live record; on a difference leave again
        and raise ServedConfigMismatch (two processes starting together with different prices
        both see each other and both refuse)."""
        try:
            await self.renew()
            others = await self._others()
        except RedisError as exc:
            raise RegistryUnavailable(
                f"cannot reach Redis ({self._settings.url.split('@')[-1]}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        for instance_id, served in others.items():
            differences = self.served.differences(served)
            if differences:
                await self.leave()
                raise ServedConfigMismatch(
                    f"this process serves other settings than the running process {instance_id}: "
                    + "; ".join(differences)
                    + ". Every web process must read the same catalog, prices and secret; to "
                    "change prices stop every process, then start them all."
                )

    async def _others(self) -> dict[str, ServedConfig]:
        found: dict[str, ServedConfig] = {}
        pattern = self._key("*")
        async for raw_key in self._redis.scan_iter(match=pattern, count=SCAN_COUNT):
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            instance_id = key.removeprefix(self._key(""))
            if instance_id == self.instance_id:
                continue
            value = await self._redis.get(key)
            if value is None:
                continue  # expired between the scan and the read
            found[instance_id] = ServedConfig(**json.loads(value))
        return found

    async def renew(self) -> None:
        await self._redis.set(
            self._key(self.instance_id),
            json.dumps(dataclasses.asdict(self.served)),
            ex=self._settings.lease_ttl_s,
        )

    async def leave(self) -> None:
        try:
            await self._redis.delete(self._key(self.instance_id))
        except RedisError as exc:  # the record expires by itself
            log.warning("instance_leave_failed", error=str(exc))
