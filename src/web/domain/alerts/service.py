"""A user's alert thresholds (stored in `alert_settings`), their evaluation after each settled
chat (a background task: a chat never waits for it), the notices the page shows until they are
dismissed or no longer true (`notices.py`), and the webhook event (`webhook.WebhookNotifier`)
where the operator configured one.

After a reply settles, the low-balance threshold is checked against the available balance
before and after it, and the budget-use threshold against each limited budget the reply's hold
counted under (the user's caps and the API key's limits), from the ledger's use of it now
minus what the reply took. Each crossing leaves a notice and posts one event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger import Ledger
from web.domain.accounts.schemas import Identity
from web.domain.alerts.notices import (
    NoticeView,
    dismiss_notice,
    notice_view,
    pending_notices,
    record_notices,
)
from web.domain.alerts.rules import (
    BudgetFigures,
    Crossing,
    balance_crossing,
    budget_crossing,
    budget_use_percent,
)
from web.domain.alerts.webhook import WebhookNotifier
from web.domain.budgets.services import LIMIT_WORDS, BudgetsService
from web.domain.chat.schemas import ChatCompleted
from web.errors import NotFound
from web.logging import get_logger
from web.tables import AlertSettingsRow

log = get_logger(__name__)
MAX_THRESHOLD_CREDITS = 10_000_000
MAX_PENDING_CHECKS = 1000


class AlertSettingsUpdate(msgspec.Struct, forbid_unknown_fields=True):
    low_balance_credits: Annotated[int, msgspec.Meta(ge=0, le=MAX_THRESHOLD_CREDITS)] | None = None
    """Alert when the available balance falls to this or below (none: off)."""
    budget_use_percent: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    """Alert when this percent of a budget (a cap of yours, a limit of one of your API keys)
    is used (none: off)."""


class AlertsView(msgspec.Struct):
    low_balance_credits: int | None
    budget_use_percent: int | None
    notice: str | None
    """The last alert's notice (kept when dismissed; `notices` lists what is still shown)."""
    notice_at: dt.datetime | None
    notices: list[NoticeView] = msgspec.field(default_factory=list)
    """Notices not dismissed whose condition still holds (the page shows these)."""


class AlertsService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ledger: Ledger,
        budgets: BudgetsService,
        webhook: WebhookNotifier | None,
    ) -> None:
        self._sessions = sessions
        self._ledger = ledger
        self._budgets = budgets
        self._webhook = webhook
        self._checks: dict[int, set[asyncio.Task[None]]] = {}

    async def _settings(self, user_id: int) -> AlertSettingsRow | None:
        async with self._sessions() as session:
            return await session.get(AlertSettingsRow, user_id)

    async def get(self, identity: Identity) -> AlertsView:
        row = await self._settings(identity.user_id)
        if row is None:
            return AlertsView(None, None, None, None)
        return AlertsView(
            row.low_balance_credits,
            row.budget_use_percent,
            row.notice,
            row.notice_at,
            await self._shown(identity, row),
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

    async def notices(self, identity: Identity) -> list[NoticeView]:
        """The notices the page shows: not dismissed, and still true."""
        row = await self._settings(identity.user_id)
        return [] if row is None else await self._shown(identity, row)

    async def dismiss(self, identity: Identity, notice_id: int) -> AlertsView:
        """Hide one notice until its threshold is crossed again."""
        now = dt.datetime.now(dt.UTC)
        if not await dismiss_notice(self._sessions, identity.user_id, notice_id, now):
            raise NotFound(f"no alert notice {notice_id}")
        return await self.get(identity)

    async def _shown(self, identity: Identity, settings: AlertSettingsRow) -> list[NoticeView]:
        """Pending notices whose condition holds now: the balance still at or below the
        threshold, the budget still at or above the percent in its current period."""
        pending = await pending_notices(self._sessions, identity.user_id)
        if not pending:
            return []
        shown = []
        budget_percents: dict[tuple[str, str], int] | None = None
        for row in pending:
            view = notice_view(row)
            if row.kind == "low_balance":
                threshold = settings.low_balance_credits
                if threshold is None:
                    continue
                available = (await self._ledger.balance(identity.account_id)).available
                if available <= threshold:
                    shown.append(view)
            elif row.kind == "budget_use" and settings.budget_use_percent is not None:
                if budget_percents is None:
                    budget_percents = await self._budget_percents(identity)
                used = budget_percents.get((view.budget_id or "", view.period or ""), 0)
                if used >= settings.budget_use_percent:
                    shown.append(view)
        return shown

    async def _budget_percents(self, identity: Identity) -> dict[tuple[str, str], int]:
        """Percent used of each limit of the user and its keys, by (budget id, period); of
        two limits over one budget and period, the fuller."""
        percents: dict[tuple[str, str], int] = {}
        for view in (await self._budgets.views(identity, with_keys=True)).budgets:
            key = (view.budget_id, view.period)
            used = budget_use_percent(view.used_credits, view.limit_credits)
            percents[key] = max(used, percents.get(key, 0))
        return percents

    # -- after each settled chat ---------------------------------------------------------

    def settled(self, identity: Identity, done: ChatCompleted) -> None:
        """Listener of settled chats: schedules the check, never waits for it."""
        if sum(len(tasks) for tasks in self._checks.values()) >= MAX_PENDING_CHECKS:
            log.warning("alert_check_skipped", request_id=done.request_id)
            return
        task = asyncio.create_task(self._check(identity, done))
        tasks = self._checks.setdefault(identity.user_id, set())
        tasks.add(task)
        task.add_done_callback(lambda finished: self._forget(identity.user_id, finished))

    def _forget(self, user_id: int, task: asyncio.Task[None]) -> None:
        tasks = self._checks.get(user_id)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._checks[user_id]

    async def checked(self, user_id: int, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the checks of this user's settled replies, so the
        page shows a notice the reply it just showed caused."""
        tasks = list(self._checks.get(user_id, ()))
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    async def drained(self) -> None:
        """Wait for the scheduled checks (tests, shutdown)."""
        while self._checks:
            tasks = [task for tasks in self._checks.values() for task in tasks]
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _check(self, identity: Identity, done: ChatCompleted) -> None:
        try:
            crossings = await self._crossings(identity, done)
            if not crossings:
                return
            now = dt.datetime.now(dt.UTC)
            await record_notices(self._sessions, identity.user_id, crossings, now)
            async with self._sessions.begin() as session:
                row = await session.get(AlertSettingsRow, identity.user_id)
                if row is not None:
                    row.notice, row.notice_at = crossings[-1].message, now
        except Exception as exc:
            log.error("alert_check_failed", request_id=done.request_id, error=str(exc))
            return
        for crossing in crossings:
            log.info(f"alert_{crossing.kind}", user_id=identity.user_id, subject=crossing.subject)
            if self._webhook is not None:
                self._webhook.post(
                    {
                        **crossing.event,
                        "user_id": identity.user_id,
                        "username": identity.username,
                        "request_id": done.request_id,
                        "occurred_at": now.isoformat(),
                    }
                )

    async def _crossings(self, identity: Identity, done: ChatCompleted) -> list[Crossing]:
        """The thresholds this reply crossed (none when the user set none)."""
        async with self._sessions() as session:
            row = await session.scalar(
                select(AlertSettingsRow).where(AlertSettingsRow.user_id == identity.user_id)
            )
        if row is None or done.cost_credits <= 0:
            return []
        after = done.balance.available
        # The reply's net effect on available credits is its cost (the hold's rest came back).
        found = [balance_crossing(after + done.cost_credits, after, row.low_balance_credits)]
        if row.budget_use_percent is not None:
            for budget in await self._budget_figures(identity):
                found.append(budget_crossing(budget, done.cost_credits, row.budget_use_percent))
        return [crossing for crossing in found if crossing is not None]

    async def _budget_figures(self, identity: Identity) -> list[BudgetFigures]:
        """Each limited budget a chat of this identity counts under, as the ledger has it now."""
        chat_budgets = await self._budgets.for_chat(identity)
        figures = []
        for budget in chat_budgets.limited():
            assert budget.limit is not None  # limited() keeps only budgets with a limit
            use = await self._ledger.budget_use(identity.account_id, budget)
            name = chat_budgets.names.get((budget.budget_id, budget.period), "key_period")
            figures.append(
                BudgetFigures(
                    budget_id=budget.budget_id,
                    period=budget.period,
                    limit=name,
                    limit_credits=budget.limit,
                    used_after=use.used,
                    words=LIMIT_WORDS[name].format(period=budget.period),
                    resets_at=None if use.resets_at is None else use.resets_at.isoformat(),
                )
            )
        return figures
