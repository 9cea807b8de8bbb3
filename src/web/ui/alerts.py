"""Alerts in the page: the notices a crossed low-balance or budget-use threshold left, shown at
the top of the chat column right under the header and balance until dismissed or no longer true
(the alerts service decides which), and the account page's threshold form. Nothing here decides
whether a threshold was crossed.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from web.domain.accounts.schemas import Identity
from web.domain.alerts.notices import NoticeView
from web.domain.alerts.service import MAX_THRESHOLD_CREDITS, AlertSettingsUpdate
from web.errors import NotFound, ServiceError
from web.services import Services
from web.ui.session import SessionEnded, UISession, identity
from web.ui.text import notice_html

ALERT_CHECK_WAIT_S = 3.0
"""How long the page's refresh after a reply waits for that reply's alert check (a background
task) before it shows the notices without it; the next refresh shows it then."""


def alerts_html(notices: list[NoticeView]) -> str:
    """One warning line per notice (escaped); "" when there is none (the bar then hides)."""
    return "".join(
        notice_html("warning", f"{notice.message} ({notice.created_at:%Y-%m-%d %H:%M} UTC)")
        for notice in notices
    )


def check_threshold(value: Any, low: int, high: int, what: str) -> int | None:
    """A whole number in [low, high], None when empty; ValueError naming `what` otherwise."""
    if value in (None, "") or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"{what} must be a whole number")
    if not low <= int(value) <= high:
        raise ValueError(f"{what} must be between {low} and {high}")
    return int(value)


class AlertActions:
    def __init__(self, services: Services) -> None:
        self._services = services

    async def shown(self, caller: Identity) -> tuple[str, list[int]]:
        """The notices to show (after waiting briefly for the caller's pending checks), as
        (html, their ids)."""
        alerts = self._services.alerts
        await alerts.checked(caller.user_id, ALERT_CHECK_WAIT_S)
        notices = await alerts.notices(caller)
        return alerts_html(notices), [notice.id for notice in notices]

    async def dismiss(self, session: UISession, ids: Any) -> tuple[Any, Any]:
        """Dismiss the notices on screen (a notice that arrives meanwhile stays). Returns
        (notices html, their ids)."""
        try:
            caller = await identity(session, self._services.accounts)
            for notice_id in ids or []:
                try:
                    await self._services.alerts.dismiss(caller, int(notice_id))
                except NotFound:
                    continue  # gone already (another tab dismissed it)
            return await self.shown(caller)
        except SessionEnded:
            return gr.skip(), gr.skip()

    async def thresholds(self, session: UISession) -> tuple[Any, Any]:
        """The caller's thresholds for the account page's form."""
        try:
            caller = await identity(session, self._services.accounts)
        except SessionEnded:
            return gr.skip(), gr.skip()
        view = await self._services.alerts.get(caller)
        return view.low_balance_credits, view.budget_use_percent

    async def save(self, session: UISession, low_balance: Any, budget_percent: Any) -> str:
        """Set both thresholds (empty: off); returns a notice."""
        try:
            update = AlertSettingsUpdate(
                low_balance_credits=check_threshold(
                    low_balance, 0, MAX_THRESHOLD_CREDITS, "the low-balance threshold"
                ),
                budget_use_percent=check_threshold(
                    budget_percent, 1, 100, "the budget-use percent"
                ),
            )
        except ValueError as error:
            return notice_html("error", str(error)[0].upper() + str(error)[1:] + ".")
        try:
            caller = await identity(session, self._services.accounts)
            await self._services.alerts.set(caller, update)
        except SessionEnded as ended:
            return notice_html("error", ended.message)
        except ServiceError as error:
            return notice_html("error", error.message)
        parts = []
        if update.low_balance_credits is not None:
            parts.append(f"when your balance falls to {update.low_balance_credits} credits")
        if update.budget_use_percent is not None:
            parts.append(f"when {update.budget_use_percent}% of a budget is used")
        if not parts:
            return notice_html("success", "Alerts are off.")
        return notice_html("success", "You will be alerted " + " and ".join(parts) + ".")
