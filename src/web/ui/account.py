"""The account page's actions: balance, paged transaction history with CSV export, usage
plots per day and model, and API keys (created secrets are shown once). Reads and writes go
through the billing and keys services; nothing here computes money.
"""

from __future__ import annotations

import datetime as dt
import html
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the env

from web.domain.accounts.schemas import Identity
from web.domain.billing.schemas import TransactionView, UsageReport
from web.errors import ServiceError
from web.services import Services
from web.ui.export_files import private_folder, schedule_sweep, sweep
from web.ui.session import SessionEnded, UISession, identity
from web.ui.text import balance_html, notice_html

HISTORY_PAGE_SIZE = 20
HISTORY_COLUMNS = ["Time (UTC)", "Type", "Amount", "Balance after", "Model", "Tokens", "Reason"]
USAGE_DAYS = 30
KEY_COLUMNS = ["Id", "Name", "Prefix", "Created (UTC)", "Last used", "Status"]


def _time(value: dt.datetime | None) -> str:
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fresh_csv_path(username: str, ttl_s: float) -> Path:
    """A new file in the private export folder, after deleting exports older than `ttl_s`;
    another sweep is scheduled for just after this one's TTL (web.ui.export_files)."""
    sweep(ttl_s)
    schedule_sweep(ttl_s)
    return private_folder() / f"transactions-{username}-{uuid.uuid4().hex[:8]}.csv"


def transaction_rows(transactions: list[TransactionView]) -> list[list[Any]]:
    rows = []
    for row in transactions:
        tokens = ""
        if row.prompt_tokens is not None or row.completion_tokens is not None:
            tokens = f"{row.prompt_tokens or 0} + {row.completion_tokens or 0}"
        rows.append(
            [
                _time(row.occurred_at),
                row.type,
                row.amount,
                row.balance_after,
                row.model or "",
                tokens,
                row.reason or row.note or "",
            ]
        )
    return rows


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


class AccountActions:
    """Handlers of the account page, bound to the application services."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def _identity(self, session: UISession) -> Identity:
        return await identity(session, self._services.accounts)

    async def overview(self, session: UISession) -> tuple[Any, ...]:
        """Everything on the page, first history page. Returns (badge, cards, history,
        page label, credits plot, tokens plot, key table, revoke choices, notice)."""
        try:
            caller = await self._identity(session)
        except SessionEnded as ended:
            return (*([gr.skip()] * 8), notice_html("error", ended.message))
        session.history_cursors = [None]
        balance = await self._services.billing.balance(caller)
        history, page_label = await self._history_page(caller, session, 0)
        credits, tokens = usage_frames(await self._services.billing.usage(caller))
        return (
            balance_html(balance.available, balance.held),
            balance_cards(balance.posted, balance.held, balance.available),
            history,
            page_label,
            credits,
            tokens,
            *await self._keys(caller),
            notice_html("info", ""),
        )

    async def _history_page(
        self, caller: Identity, session: UISession, index: int
    ) -> tuple[list[list[Any]], str]:
        page = await self._services.billing.transactions(
            caller, cursor=session.history_cursors[index], limit=HISTORY_PAGE_SIZE
        )
        del session.history_cursors[index + 1 :]
        if page.next_cursor is not None:
            session.history_cursors.append(page.next_cursor)
        has_next = page.next_cursor is not None
        label = f"Page {index + 1}" + ("" if has_next else " (last)")
        return transaction_rows(page.transactions), label

    async def turn_page(self, session: UISession, page_label: str, step: int) -> tuple[Any, ...]:
        """Previous (-1) or next (+1) history page. Returns (history, page label, notice)."""
        try:
            caller = await self._identity(session)
        except SessionEnded as ended:
            return gr.skip(), gr.skip(), notice_html("error", ended.message)
        current = int(page_label.split()[1]) - 1 if page_label.startswith("Page ") else 0
        target = current + step
        if target < 0 or target >= len(session.history_cursors):
            return gr.skip(), gr.skip(), notice_html("info", "No more pages that way.")
        history, label = await self._history_page(caller, session, target)
        return history, label, notice_html("info", "")

    async def export_csv(self, session: UISession) -> tuple[Any, str]:
        """Write the full history as CSV for download. Returns (file, notice)."""
        try:
            caller = await self._identity(session)
        except SessionEnded as ended:
            return gr.skip(), notice_html("error", ended.message)
        text = await self._services.billing.transactions_csv(caller)
        path = _fresh_csv_path(caller.username, self._services.settings.server.csv_export_ttl_s)
        path.write_text(text, encoding="utf-8")
        return gr.update(value=str(path), visible=True), notice_html("success", "CSV ready.")

    async def _keys(self, caller: Identity) -> tuple[list[list[Any]], Any]:
        """The key table and the revoke selector's choices (active keys only)."""
        keys = await self._services.api_keys.list(caller)
        choices = [
            (f"{key.name} ({key.prefix}…)", key.id) for key in keys if key.revoked_at is None
        ]
        rows = [
            [
                key.id,
                key.name,
                f"{key.prefix}…",
                _time(key.created_at),
                _time(key.last_used_at),
                "revoked" if key.revoked_at else "active",
            ]
            for key in keys
        ]
        return rows, gr.update(choices=choices, value=None)

    async def create_key(self, session: UISession, name: str) -> tuple[Any, ...]:
        """Returns (secret box, key table, revoke choices, notice); the secret is shown once."""
        try:
            caller = await self._identity(session)
            created = await self._services.api_keys.create(caller, name.strip() or "default")
        except SessionEnded as ended:
            return gr.skip(), gr.skip(), gr.skip(), notice_html("error", ended.message)
        except ServiceError as error:
            return gr.skip(), gr.skip(), gr.skip(), notice_html("error", error.message)
        return (
            gr.update(value=created.secret, visible=True),
            *await self._keys(caller),
            notice_html(
                "success",
                f"Key {created.key.name!r} created. Copy it now: it is shown only this once.",
            ),
        )

    async def revoke_key(self, session: UISession, key_id: Any) -> tuple[Any, Any, str]:
        """Returns (key table, revoke choices, notice)."""
        if key_id in (None, ""):
            return gr.skip(), gr.skip(), notice_html("error", "Choose the key to revoke.")
        try:
            caller = await self._identity(session)
            revoked = await self._services.api_keys.revoke(caller, int(key_id))
        except SessionEnded as ended:
            return gr.skip(), gr.skip(), notice_html("error", ended.message)
        except ServiceError as error:
            return gr.skip(), gr.skip(), notice_html("error", error.message)
        rows, choices = await self._keys(caller)
        return rows, choices, notice_html("success", f"Key {revoked.name!r} revoked.")


def audit_html(clean: bool, report: dict[str, Any]) -> str:
    """The audit report with each violation highlighted; values are escaped."""
    violations = report.get("violations") or []
    if clean and not violations:
        summary = '<div class="lc-notice lc-notice-success">Audit clean: no violations.</div>'
    else:
        summary = (
            f'<div class="lc-notice lc-notice-error">{len(violations)} violation(s) found.</div>'
        )
    items = "".join(
        f'<li class="lc-violation">{html.escape(str(violation))}</li>' for violation in violations
    )
    details = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
        for key, value in report.items()
        if key != "violations"
    )
    return (
        f'<div class="lc-audit">{summary}'
        + (f'<ul class="lc-violations">{items}</ul>' if items else "")
        + f'<table class="lc-audit-table">{details}</table></div>'
    )
