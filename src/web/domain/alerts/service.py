"""A user's alert thresholds (stored in `alert_settings`), their evaluation after each settled
chat (a background task: a chat never waits for it), the notice the page shows, and the
webhook event (`webhook.WebhookNotifier`) where the operator configured one."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web.domain.accounts.schemas import Identity
from web.domain.alerts.rules import balance_crossed
from web.domain.alerts.webhook import WebhookNotifier
from web.domain.chat.schemas import ChatCompleted
from web.logging import get_logger
from web.tables import AlertSettingsRow

log = get_logger(__name__)
MAX_THRESHOLD_CREDITS = 10_000_000
MAX_PENDING_CHECKS = 1000


class AlertSettingsUpdate(msgspec.Struct, forbid_unknown_fields=True):
    low_balance_credits: Annotated[int, msgspec.Meta(ge=0, le=MAX_THRESHOLD_CREDITS)] | None = None
    """Alert when the available balance falls to this or below (none: off)."""
    budget_use_percent: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    """Alert when this percent of a budget is used (none: off; budgets are set elsewhere)."""


class AlertsView(msgspec.Struct):
    low_balance_credits: int | None
    budget_use_percent: int | None
    notice: str | None
    notice_at: dt.datetime | None


class AlertsService:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], webhook: WebhookNotifier | None
    ) -> None:
        self._sessions = sessions
        self._webhook = webhook
        self._checks: set[asyncio.Task[None]] = set()

    async def get(self, identity: Identity) -> AlertsView:
        async with self._sessions() as session:
            row = await session.get(AlertSettingsRow, identity.user_id)
        if row is None:
            return AlertsView(None, None, None, None)
        return AlertsView(
            row.low_balance_credits, row.budget_use_percent, row.notice, row.notice_at
        )

    async def set(self, identity: Identity, update: AlertSettingsUpdate) -> AlertsView:
        async with self._sessions.begin() as session:
            row = await session.get(AlertSettingsRow, identity.user_id)
            if row is None:
                row = AlertSettingsRow(user_id=identity.user_id)
                session.add(row)
            row.low_balance_credits = update.low_balance_credits
            row.budget_use_percent = update.budget_use_percent
            row.updated_at = dt.datetime.now(dt.UTC)
        return await self.get(identity)

    def settled(self, identity: Identity, done: ChatCompleted) -> None:
        """Listener of settled chats: schedules the check, never waits for it."""
        if len(self._checks) >= MAX_PENDING_CHECKS:
            log.warning("alert_check_skipped", request_id=done.request_id)
            return
        task = asyncio.create_task(self._check(identity, done))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def drained(self) -> None:
        """Wait for the scheduled checks (tests, shutdown)."""
        while self._checks:
            await asyncio.gather(*list(self._checks), return_exceptions=True)

    async def _check(self, identity: Identity, done: ChatCompleted) -> None:
        after = done.balance.available
        # The reply's net effect on available credits is its cost (the hold's rest came back).
        before = after + done.cost_credits
        try:
            async with self._sessions.begin() as session:
                row = await session.scalar(
                    select(AlertSettingsRow).where(AlertSettingsRow.user_id == identity.user_id)
                )
                if row is None or not balance_crossed(before, after, row.low_balance_credits):
                    return
                now = dt.datetime.now(dt.UTC)
                row.notice = (
                    f"Your available balance fell to {after} credits, at or below your alert "
                    f"threshold of {row.low_balance_credits}."
                )
                row.notice_at = now
                threshold = row.low_balance_credits
        except Exception as exc:
            log.error("alert_check_failed", request_id=done.request_id, error=str(exc))
            return
        log.info("alert_low_balance", user_id=identity.user_id, available=after)
        if self._webhook is not None:
            self._webhook.post(
                {
                    "type": "low_balance",
                    "user_id": identity.user_id,
                    "username": identity.username,
                    "available": after,
                    "threshold": threshold,
                    "request_id": done.request_id,
                    "occurred_at": now.isoformat(),
                }
            )
