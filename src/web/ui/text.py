"""Turning service results into the text the UI shows: safe chat Markdown, credit amounts,
prices, per-reply cost lines and notices. Pure functions, so they are tested without a browser.

Chat text (the user's and the model's) is Markdown whose HTML is escaped before Gradio renders
it: `<script>` shows as the characters `<script>`, never as an element. Code spans and fenced
blocks are left alone because Markdown already shows their content literally.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

# A fenced block runs from ``` (or ~~~) to the same fence or to the end of the text: while a
# reply streams, an unclosed fence is still code, as Markdown renders it.
_CODE_PATTERN = re.compile(r"(```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]+`)", re.DOTALL)

NOTICE_KINDS = ("info", "success", "warning", "error")
# The page's script greys out selector options containing this (see web.ui.styles).
UNAVAILABLE_MARKER = "— unavailable:"
# What end users read about a model that cannot answer; why (missing weights, a failed load)
# is the operator's business and goes to admins and the logs.
NOT_INSTALLED = "not installed on this server"
# The worked example under every price (billing's EXAMPLE_* token counts).
EXAMPLE_QUESTION = "a 20-word question (about 30 prompt tokens) with a 100-token reply"


def escape_chat_markdown(text: str) -> str:
    """Escape `&`, `<`, `>` outside code so no HTML in `text` reaches the page as markup."""
    parts = _CODE_PATTERN.split(text)
    # re.split with one capturing group alternates: prose, code, prose, code, ...
    return "".join(
        part if index % 2 == 1 else html.escape(part, quote=False)
        for index, part in enumerate(parts)
    )


def credits_label(amount: int) -> str:
    """`1 credit`, `12 credits`, `-3 credits`, with thousands separators."""
    unit = "credit" if abs(amount) == 1 else "credits"
    return f"{amount:,} {unit}"


@dataclass(frozen=True)
class PriceTerms:
    """A model's price as the UI shows it next to the model's name."""

    per_message_credits: int
    prompt_credits_per_1k_tokens: int
    completion_credits_per_1k_tokens: int
    example_credits: int | None = None
    """What the worked example costs, computed by the billing formula; None: not shown."""
    rounding: str = "total"


def price_label(price: PriceTerms) -> str:
    """`2 cr/message + 1 cr/1k prompt + 4 cr/1k reply tokens`, leaving out zero terms, then
    the worked example when given: the rates alone read as less than a reply is billed."""
    terms = []
    if price.per_message_credits:
        terms.append(f"{price.per_message_credits} cr/message")
    if price.prompt_credits_per_1k_tokens:
        terms.append(f"{price.prompt_credits_per_1k_tokens} cr/1k prompt tokens")
    if price.completion_credits_per_1k_tokens:
        terms.append(f"{price.completion_credits_per_1k_tokens} cr/1k reply tokens")
    if not terms:
        return "free"
    label = " + ".join(terms)
    if price.example_credits is not None:
        label += f"; {worked_example(price.example_credits, price.rounding)}"
    return label


def worked_example(example_credits: int, rounding: str = "total") -> str:
    """`a 20-word question (...) with a 100-token reply costs 2 credits`, and how it rounds."""
    how = "rounded up once per reply" if rounding == "total" else "each part rounded up"
    return f"{EXAMPLE_QUESTION} costs {credits_label(example_credits)} ({how})"


def model_choice_label(
    display_name: str,
    price: PriceTerms,
    unavailable_reason: str | None,
    operator_detail: bool = False,
) -> str:
    """The model selector's label: name and price, or name and that it cannot be chosen (why,
    for operators only)."""
    if unavailable_reason is not None:
        reason = unavailable_reason if operator_detail else NOT_INSTALLED
        return f"{display_name} {UNAVAILABLE_MARKER} {reason}"
    return f"{display_name} — {price_label(price)}"


def model_option_label(
    display_name: str, unavailable_reason: str | None, operator_detail: bool = False
) -> str:
    """The model picker's short label: the name alone (the price has its own line under the
    message box, where it fits), or the name and that it cannot be chosen (why, for operators
    only)."""
    if unavailable_reason is None:
        return display_name
    reason = unavailable_reason if operator_detail else NOT_INSTALLED
    return f"{display_name} {UNAVAILABLE_MARKER} {reason}"


def model_price_line(display_name: str, price: PriceTerms) -> str:
    """The chosen model's price as one line of Markdown: rates, then the worked example."""
    return f"**{html.escape(display_name, quote=False)}**: {price_label(price)}"


@dataclass(frozen=True)
class ReplyCost:
    """What one settled reply cost, for the line under it."""

    cost_credits: int
    prompt_tokens: int
    completion_tokens: int
    model_requested: str
    model_answered: str
    settlement: str
    release_reason: str | None = None
    request_id: str | None = None
    """The reply's request id (its receipt is `GET /api/receipts/{request_id}`)."""
    max_tokens_shrunk_to: int | None = None
    receipt_url: str | None = None
    """A signed, short-lived link to the reply's receipt (`web.domain.receipts.links`): a
    plain `/api/receipts/...` link would not carry the page's bearer token."""


def reply_footer(cost: ReplyCost) -> str:
    """One Markdown line under a reply: cost, tokens, model, and why if not fully normal."""
    pieces = [
        f"**{credits_label(cost.cost_credits)}**",
        f"{cost.prompt_tokens} prompt + {cost.completion_tokens} reply tokens",
        f"`{cost.model_answered}`",
    ]
    if cost.model_answered != cost.model_requested:
        pieces.append(f"fallback: `{cost.model_requested}` was unavailable")
    if cost.max_tokens_shrunk_to is not None:
        pieces.append(f"shortened to {cost.max_tokens_shrunk_to} tokens to fit your credits")
    if cost.settlement == "partially_captured":
        pieces.append("stopped: billed for the tokens generated")
    elif cost.settlement == "released":
        reason = escape_chat_markdown(cost.release_reason or "the reply failed")
        pieces.append(f"refunded in full ({reason})")
    line = "*" + " · ".join(pieces) + "*"
    if cost.receipt_url is not None:
        # The service made the link: a path and a query of URL-safe characters only.
        line += f" · [receipt]({cost.receipt_url})"
    return line


def model_loading_notice(display_name: str, percent: int, stage: str | None) -> str:
    """While a model is prepared and loaded: how far, and that a chat waits for it."""
    doing = f" ({stage})" if stage else ""
    return notice_html(
        "info",
        f"{display_name}: model loading, {percent}%{doing}. Messages sent before it is "
        "ready are refused and nothing is charged.",
    )


def notice_html(kind: str, message: str) -> str:
    """A banner for the chat and account pages; the message is escaped."""
    if kind not in NOTICE_KINDS:
        raise ValueError(f"notice kind must be one of {NOTICE_KINDS}, got {kind!r}")
    if not message:
        return ""
    return f'<div class="lc-notice lc-notice-{kind}" role="status">{html.escape(message)}</div>'


def balance_html(available: int, held: int) -> str:
    """The balance badge in the header, always visible while signed in."""
    held_part = f' <span class="lc-held">· {held:,} held</span>' if held else ""
    return (
        '<div class="lc-balance" id="lc-balance-badge">'
        f'<span class="lc-balance-label">Balance</span> '
        f'<span class="lc-balance-amount" data-available="{available}">{available:,}</span>'
        f" {'credit' if available == 1 else 'credits'}{held_part}</div>"
    )
