"""The account page's actions: balance, the history (one row per reply, top-up or refund, or
every raw ledger event) in pages with CSV export, prices, usage plots per day and model, and
API keys (a created secret is shown once, and never again once that key is revoked). Reads
and writes go through the billing, chat and keys services; nothing here computes money.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the env

from web.domain.accounts.schemas import Identity
from web.domain.billing.schemas import UsageReport
from web.domain.budgets.schemas import MAX_BUDGET_CREDITS, CapRequest, KeyBudget
from web.errors import ServiceError, ValidationFailed
from web.services import Services
from web.ui.account_text import (
    EVENTS_VIEW,
    event_rows,
    history_rows,
    long_time,
    prices_html,
)
from web.ui.export_files import private_folder, schedule_sweep, sweep
from web.ui.session import SessionEnded, UISession, identity
from web.ui.text import balance_html, notice_html

HISTORY_PAGE_SIZE = 20
USAGE_DAYS = 30


def _fresh_csv_path(username: str, ttl_s: float) -> Path:
    """A new file in the private export folder, after deleting exports older than `ttl_s`;
    another sweep is scheduled for just after this one's TTL (web.ui.export_files)."""
    sweep(ttl_s)
    schedule_sweep(ttl_s)
    return private_folder() / f"transactions-{username}-{uuid.uuid4().hex[:8]}.csv"


def usage_frames(report: UsageReport) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Credits and tokens per day and model, as long tables for Gradio's bar plots."""
    frame = pd.DataFrame(
        [
            {
                "day": row.day,
                "model": row.model,
                "credits": row.credits,
                "tokens": row.prompt_tokens + row.completion_tokens,
            }
            for row in report.rows
        ],
        columns=["day", "model", "credits", "tokens"],
    )
    return frame[["day", "model", "credits"]], frame[["day", "model", "tokens"]]


def balance_cards(posted: int, held: int, available: int) -> str:
    cards = (
        ("Posted", posted, "lc-posted"),
        ("Held", held, "lc-held-card"),
        ("Available", available, "lc-available"),
    )
    return (
        '<div class="lc-cards">'
        + "".join(
            f'<div class="lc-card {css}"><div class="lc-card-label">{label}</div>'
            f'<div class="lc-card-value" data-value="{value}">{value:,}</div></div>'
            for label, value, css in cards
        )
        + "</div>"
    )


def _page_number(page_label: str) -> int:
    """0-based index of `Page N` / `Page N (last)`; 0 for anything else."""
    parts = page_label.split()
    if len(parts) >= 2 and parts[0] == "Page" and parts[1].isdigit():
        return int(parts[1]) - 1
    return 0


class AccountActions:
    """Handlers of the account page, bound to the application services."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def _identity(self, session: UISession) -> Identity:
        return await identity(session, self._services.accounts)

    async def overview(self, session: UISession, view: str) -> tuple[Any, ...]:
        """Everything on the page, first history page of `view`. Returns (badge, cards,
        summary table, events table, page label, prices, credits plot, tokens plot, key
        table, revoke choices, history notice)."""
        try:
            caller = await self._identity(session)
        except SessionEnded as ended:
            return (*([gr.skip()] * 10), notice_html("error", ended.message))
        session.history_cursors = [None]
        balance = await self._services.billing.balance(caller)
        summary, events, page_label = await self._history_page(caller, session, view, 0)
        credits, tokens = usage_frames(await self._services.billing.usage(caller))
        return (
            balance_html(balance.available, balance.held),
            balance_cards(balance.posted, balance.held, balance.available),
            summary,
            events,
            page_label,
            prices_html(self._services.chat.models(), operator_detail=caller.is_admin),
            credits,
            tokens,
            *await self._keys(caller),
            notice_html("info", ""),
        )

    async def _history_page(
        self, caller: Identity, session: UISession, view: str, index: int
    ) -> tuple[Any, Any, str]:
        """Page `index` of the chosen view; the other view's table is hidden."""
        cursor = session.history_cursors[index]
        billing = self._services.billing
        if view == EVENTS_VIEW:
            page = await billing.transactions(caller, cursor=cursor, limit=HISTORY_PAGE_SIZE)
            next_cursor = page.next_cursor
            summary = gr.update(visible=False)
            events = gr.update(value=event_rows(page.transactions), visible=True)
        else:
            grouped = await billing.history(caller, cursor=cursor, limit=HISTORY_PAGE_SIZE)
            next_cursor = grouped.next_cursor
            summary = gr.update(value=history_rows(grouped.items), visible=True)
            events = gr.update(visible=False)
        del session.history_cursors[index + 1 :]
        if next_cursor is not None:
            session.history_cursors.append(next_cursor)
        label = f"Page {index + 1}" + ("" if next_cursor is not None else " (last)")
        return summary, events, label

    async def turn_page(
        self, session: UISession, page_label: str, view: str, step: int
    ) -> tuple[Any, ...]:
        """Previous (-1) or next (+1) page, or the first page again when `step` is 0 (a new
        view). Returns (summary table, events table, page label, notice)."""
        try:
            caller = await self._identity(session)
        except SessionEnded as ended:
            return gr.skip(), gr.skip(), gr.skip(), notice_html("error", ended.message)
        if step == 0:
            session.history_cursors = [None]
            target = 0
        else:
            target = _page_number(page_label) + step
        if target < 0 or target >= len(session.history_cursors):
            return gr.skip(), gr.skip(), gr.skip(), notice_html("info", "No more pages that way.")
        summary, events, label = await self._history_page(caller, session, view, target)
        return summary, events, label, notice_html("info", "")

    async def export_csv(self, session: UISession) -> tuple[Any, str]:
        """Write every ledger event as CSV for download. Returns (file, notice)."""
        try:
            caller = await self._identity(session)
        except SessionEnded as ended:
            return gr.skip(), notice_html("error", ended.message)
        text = await self._services.billing.transactions_csv(caller)
        path = _fresh_csv_path(caller.username, self._services.settings.server.csv_export_ttl_s)
        path.write_text(text, encoding="utf-8")
        return gr.update(value=str(path), visible=True), notice_html(
            "success", "CSV of every ledger event ready: download it below."
        )

    async def _keys(self, caller: Identity) -> tuple[list[list[Any]], Any]:
        """The key table and the revoke selector's choices (active keys only)."""
        keys = await self._services.api_keys.list(caller)
        choices = [
            (f"{key.name} ({key.prefix}…)", key.id) for key in keys if key.revoked_at is None
        ]
        rows = [
            [
                key.name,
                f"{key.prefix}…",
                long_time(key.created_at),
                long_time(key.last_used_at),
                "revoked" if key.revoked_at else "active",
            ]
            for key in keys
        ]
        return rows, gr.update(choices=choices, value=None)

    async def create_key(
        self, session: UISession, name: str, budget_credits: float | None = None
    ) -> tuple[Any, ...]:
        """Returns (secret box, id of the key shown, key table, revoke choices, notice); the
        secret is shown once. A budget given is the key's monthly limit."""
        try:
            caller = await self._identity(session)
            created = await self._services.api_keys.create(caller, name.strip() or "default")
            if budget_credits is not None:
                budget = KeyBudget(period="month", period_credits=int(budget_credits))
                await self._services.budgets.set_key_budget(caller, created.key.id, budget)
        except SessionEnded as ended:
            return (*([gr.skip()] * 4), notice_html("error", ended.message))
        except ServiceError as error:
            return (*([gr.skip()] * 4), notice_html("error", error.message))
        return (
            gr.update(value=created.secret, visible=True),
            created.key.id,
            *await self._keys(caller),
            notice_html(
                "success",
                f"Key {created.key.name!r} created. Copy it now: it is shown only this once.",
            ),
        )

    async def set_cap(self, session: UISession, credits: float | None) -> str:
        """Set (or, empty, clear) the caller's own monthly spending cap; returns a notice."""
        try:
            caller = await self._identity(session)
            cap = None if credits is None else CapRequest(credits=int(credits), period="month")
            if cap is not None and not 0 <= cap.credits <= MAX_BUDGET_CREDITS:
                raise ValidationFailed("the cap must be a whole number of credits, 0 or more")
            await self._services.budgets.set_cap(caller, caller.user_id, "self_cap", cap)
        except SessionEnded as ended:
            return notice_html("error", ended.message)
        except ServiceError as error:
            return notice_html("error", error.message)
        if cap is None:
            return notice_html("success", "Your spending cap is cleared.")
        return notice_html(
            "success",
            f"Chats stop at {cap.credits} credits a month (calendar month, UTC) until you "
            "change the cap.",
        )

    async def revoke_key(
        self, session: UISession, key_id: Any, shown_key_id: Any
    ) -> tuple[Any, ...]:
        """Returns (secret box, id of the key shown, key table, revoke choices, notice). The
        secret on screen goes when its key is revoked: a revoked key is never shown again."""
        if key_id in (None, ""):
            return (*([gr.skip()] * 4), notice_html("error", "Choose the key to revoke."))
        try:
            caller = await self._identity(session)
            revoked = await self._services.api_keys.revoke(caller, int(key_id))
        except SessionEnded as ended:
            return (*([gr.skip()] * 4), notice_html("error", ended.message))
        except ServiceError as error:
            return (*([gr.skip()] * 4), notice_html("error", error.message))
        rows, choices = await self._keys(caller)
        if shown_key_id is not None and int(shown_key_id) == revoked.id:
            secret, shown = gr.update(value="", visible=False), None
        else:
            secret, shown = gr.skip(), shown_key_id
        return (
            secret,
            shown,
            rows,
            choices,
            notice_html("success", f"Key {revoked.name!r} revoked."),
        )
