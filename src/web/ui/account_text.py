"""What the account and admin pages show, as text and HTML: history rows for people (one per
reply, top-up or refund) and for the raw ledger events, the price list with its worked example,
and signed amounts. Pure functions over service results, tested without a browser; every value
that reaches HTML is escaped.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from typing import Any

from web.domain.billing.history import HistoryItem
from web.domain.billing.prices import PricedModel
from web.domain.billing.schemas import TransactionView
from web.ui.text import NOT_INSTALLED, PriceTerms, credits_label, price_label, worked_example

# Three columns, so the amount stays on screen on a phone; the balance after each event is in
# the raw view ("All ledger events") and the CSV.
HISTORY_COLUMNS = ["Time (UTC)", "Details", "Amount"]
EVENT_COLUMNS = ["Time (UTC)", "Type", "Amount", "Balance after", "Model", "Tokens", "Reason"]
KEY_COLUMNS = ["Name", "Prefix", "Created (UTC)", "Last used", "Status"]
SUMMARY_VIEW = "Replies and top-ups"
EVENTS_VIEW = "All ledger events"
HISTORY_VIEWS = (SUMMARY_VIEW, EVENTS_VIEW)
_KIND_NAMES = {
    "reply": "Reply",
    "hold": "Hold",
    "top_up": "Top-up",
    "refund": "Refund",
    "charge": "Charge",
}


def short_time(value: dt.datetime | None) -> str:
    """`2026-11-30 19:04` in UTC: the history's time column, short enough for a phone."""
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")


def long_time(value: dt.datetime | None) -> str:
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def signed(amount: int) -> str:
    """`+100`, `-3`, `0`, with thousands separators."""
    return f"{amount:+,}" if amount else "0"


def history_details(item: HistoryItem) -> str:
    """`Reply · gemma-3-270m · 19+64 tokens`, `Reply · pending`, `Top-up · signup grant`."""
    parts = [_KIND_NAMES.get(item.kind, item.kind)]
    if item.model:
        parts.append(item.model)
    if item.prompt_tokens is not None or item.completion_tokens is not None:
        parts.append(f"{item.prompt_tokens or 0}+{item.completion_tokens or 0} tokens")
    if item.status == "pending":
        parts.append(f"pending, {credits_label(item.held)} held")
    elif item.status == "not_billed":
        parts.append(f"not billed ({item.reason})" if item.reason else "not billed")
    elif item.kind not in ("reply", "hold") and (item.note or item.reason):
        parts.append(str(item.note or item.reason))
    return " · ".join(parts)


def history_amount(item: HistoryItem) -> str:
    """The net effect on the balance; a pending reply shows what it holds."""
    if item.status == "pending":
        return f"({item.held:,} held)"
    return signed(item.amount)


def history_rows(items: Sequence[HistoryItem]) -> list[list[Any]]:
    return [
        [
            short_time(item.occurred_at),
            history_details(item),
            history_amount(item),
        ]
        for item in items
    ]


def event_rows(transactions: Sequence[TransactionView]) -> list[list[Any]]:
    """The raw ledger events, one row each (what the CSV export holds)."""
    rows = []
    for row in transactions:
        tokens = ""
        if row.prompt_tokens is not None or row.completion_tokens is not None:
            tokens = f"{row.prompt_tokens or 0} + {row.completion_tokens or 0}"
        rows.append(
            [
                long_time(row.occurred_at),
                row.type,
                row.amount,
                row.balance_after,
                row.model or "",
                tokens,
                row.reason or row.note or "",
            ]
        )
    return rows


def _terms(model: PricedModel) -> PriceTerms:
    price = model.price
    return PriceTerms(
        per_message_credits=price.per_message_credits,
        prompt_credits_per_1k_tokens=price.prompt_credits_per_1k_tokens,
        completion_credits_per_1k_tokens=price.completion_credits_per_1k_tokens,
        rounding=price.rounding,
    )


def prices_html(models: Sequence[PricedModel], *, operator_detail: bool) -> str:
    """Each model's price as the catalog defines it and the worked example, computed by the
    billing formula that charges replies. An unavailable model says `not installed on this
    server`; operators (`operator_detail`) read the reason instead (a missing path, a failed
    load)."""
    rows = []
    for model in models:
        name = html.escape(model.display_name)
        if model.display_name != model.id:
            name += f' <span class="lc-model-id">{html.escape(model.id)}</span>'
        if model.available:
            example = worked_example(model.price.example_cost_credits(), model.price.rounding)
            status = f"{example[0].upper()}{example[1:]}."
            css = ""
        else:
            if operator_detail:
                status = f"Unavailable: {model.unavailable_reason or 'not available'}"
            else:
                status = f"{NOT_INSTALLED[0].upper()}{NOT_INSTALLED[1:]}."
            css = ' class="lc-price-unavailable"'
        rows.append(
            f"<tr{css}><td>{name}</td><td>{html.escape(price_label(_terms(model)))}</td>"
            f"<td>{html.escape(status)}</td></tr>"
        )
    return (
        '<div class="lc-table-wrap"><table class="lc-prices">'
        "<thead><tr><th>Model</th><th>Price</th><th>Example</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
