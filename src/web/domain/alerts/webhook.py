"""Posting alert events to the operator's webhook from a background task: a bounded queue
(an event that does not fit is dropped and counted, never waited for), bounded retries with
exponential back-off, and a short timeout per attempt, so a slow or dead receiver never
delays a chat."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import httpx

from web.logging import get_logger
from web.settings import BillingSettings

log = get_logger(__name__)


class WebhookNotifier:
    """`post(event)` queues; `start()` runs the sender; `close()` stops it."""

    def __init__(
        self,
        url: str,
        *,
        attempts: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        timeout_s: float = 5.0,
        queue_size: int = 1000,
    ) -> None:
        if attempts < 1 or queue_size < 1 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("attempts and queue_size must be >= 1, backoff_s >= 0, timeout_s > 0")
        self._url = url
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._timeout_s = timeout_s
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def post(self, event: Mapping[str, Any]) -> bool:
        """Queue `event` without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(dict(event))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("alert_webhook_dropped", queued=self._queue.qsize())
            return False
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="alert-webhook")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def drained(self) -> None:
        """Wait until every queued event was delivered or given up (tests, shutdown)."""
        await self._queue.join()

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self._timeout_s) as client:
            while True:
                event = await self._queue.get()
                try:
                    await self._deliver(client, event)
                finally:
                    self._queue.task_done()

    async def _deliver(self, client: httpx.AsyncClient, event: dict[str, Any]) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                response = await client.post(self._url, json=event)
                if response.is_success:
                    self.delivered += 1
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == self._attempts:
                break
            await asyncio.sleep(min(self._backoff_max_s, self._backoff_s * 2 ** (attempt - 1)))
        self.failed += 1
        log.warning("alert_webhook_failed", attempts=self._attempts, error=problem[:200])


def started_webhook(billing: BillingSettings) -> WebhookNotifier | None:
    """The alert webhook's sender, started, where LEDGERCHAT_BILLING_ALERTS_WEBHOOK_URL is set."""
    if not billing.alerts_webhook_url:
        return None
    webhook = WebhookNotifier(
        billing.alerts_webhook_url,
        attempts=billing.alerts_webhook_attempts,
        queue_size=billing.alerts_webhook_queue_size,
    )
    webhook.start()
    return webhook
