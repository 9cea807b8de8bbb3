"""The frame every tab of the page hangs in: the limits the controls show, the header (brand,
signed-in user, balance badge, Sign out) and the `views` refresh that decides between the
sign-in screen and the app after each action. Tabs wire their events against a `PageFrame`
rather than against each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from web.services import Services
from web.ui.alerts import AlertActions
from web.ui.session import SessionEnded, UISession, identity
from web.ui.signin import stored_token
from web.ui.text import balance_html, notice_html

ViewsUpdate = Callable[[UISession], Awaitable[tuple[Any, ...]]]


@dataclass(frozen=True)
class UILimits:
    """Limits the page shows in its controls; the services enforce them again."""

    default_max_tokens: int
    max_tokens_limit: int
    max_message_chars: int


@dataclass(frozen=True)
class Header:
    """The header row; the account bar shows only while signed in."""

    account_bar: Any
    user_label: Any
    balance_badge: Any
    logout_button: Any


def build_header() -> Header:
    with gr.Row(elem_id="lc-header", equal_height=True):
        gr.Markdown("## ledgerchat", elem_id="lc-brand")
        with gr.Row(visible=False, elem_id="lc-account-bar") as account_bar:
            user_label = gr.Markdown("", elem_id="lc-user")
            balance_badge = gr.HTML("", elem_id="lc-balance")
            logout_button = gr.Button(
                "Sign out",
                elem_id="logout-button",
                size="sm",
                variant="secondary",
                scale=0,
                min_width=100,
            )
    return Header(account_bar, user_label, balance_badge, logout_button)


def views_update(services: Services) -> ViewsUpdate:
    """The callback behind `PageFrame.views`, bound to the services."""
    alerts = AlertActions(services)

    async def views(session: UISession) -> tuple[Any, ...]:
        """Show the sign-in screen or the app. Returns (signin, app, account bar, admin tab,
        user label, balance badge, sign-in notice, stored token, alert notices, their ids)."""
        if session.signed_in:
            try:
                caller = await identity(session, services.accounts)
                balance = await services.billing.balance(caller)
            except SessionEnded:
                pass
            else:
                notices, notice_ids = await alerts.shown(caller)
                return (
                    gr.update(visible=False),
                    gr.update(visible=True),
                    gr.update(visible=True),
                    gr.update(visible=session.is_admin),
                    f"Signed in as **{caller.username}**" + (" (admin)" if caller.is_admin else ""),
                    balance_html(balance.available, balance.held),
                    notice_html("info", ""),
                    stored_token(session),
                    notices,
                    notice_ids,
                )
        return (
            gr.update(visible=True),
            gr.update(visible=False),
            gr.update(visible=False),
            gr.update(visible=False),
            "",
            "",
            notice_html("warning", session.ended_reason) if session.ended_reason else "",
            "",
            "",
            [],
        )

    return views


@dataclass(frozen=True)
class PageFrame:
    """What the tabs share: the session state, the browser-stored refresh token, the header,
    and the components `views` updates (in the order it returns them)."""

    session: Any
    stored_refresh_token: Any
    header: Header
    views: ViewsUpdate
    view_outputs: list[Any]

    @property
    def balance_badge(self) -> Any:
        return self.header.balance_badge

    def refresh_views(self, event: Any) -> Any:
        """Chain `views` after an event: any action may have refreshed (rotated) the tokens or
        ended the session, so keep the browser's stored token current and show the sign-in
        screen when it ended."""
        return event.then(self.views, [self.session], self.view_outputs, show_progress="hidden")
