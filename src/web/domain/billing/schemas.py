"""Wire types of balance, transactions, usage and prices."""

from __future__ import annotations

import datetime as dt

import msgspec

from web.domain.billing.prices import (
    EXAMPLE_PROMPT_TOKENS,
    EXAMPLE_QUESTION_WORDS,
    EXAMPLE_REPLY_TOKENS,
    ModelPrice,
)


class TransactionView(msgspec.Struct):
    event_id: str
    type: str
    amount: int
    balance_after: int
    available_after: int
    occurred_at: dt.datetime
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    price_version: str | None = None
    token_count: str | None = None
    """Who counted the tokens of a capture served by a remote engine: "upstream" (its own
    usage) or "local" (it sent none: counted by ledgerchat); None for the local engine."""
    hold_id: str | None = None
    reason: str | None = None
    note: str | None = None


class TransactionsPage(msgspec.Struct):
    transactions: list[TransactionView]
    next_cursor: str | None


class UsageRow(msgspec.Struct):
    day: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    credits: int


class UsageReport(msgspec.Struct):
    since: str
    until: str
    rows: list[UsageRow]
    total_credits: int
    total_completion_tokens: int


class PriceExample(msgspec.Struct):
    """A worked example, billed by the same formula as every reply."""

    question_words: int
    prompt_tokens: int
    reply_tokens: int
    cost_credits: int


class PriceView(msgspec.Struct):
    """A model's price as the catalog defines it, how it is rounded, and what a short chat
    costs: `ceil(per_message + (prompt x rate + reply x rate) / 1000)` for rounding `total`."""

    per_message_credits: int
    prompt_credits_per_1k_tokens: int
    completion_credits_per_1k_tokens: int
    rounding: str
    version: str
    example: PriceExample

    @classmethod
    def of(cls, price: ModelPrice) -> PriceView:
        return cls(
            per_message_credits=price.per_message_credits,
            prompt_credits_per_1k_tokens=price.prompt_credits_per_1k_tokens,
            completion_credits_per_1k_tokens=price.completion_credits_per_1k_tokens,
            rounding=price.rounding,
            version=price.version,
            example=PriceExample(
                question_words=EXAMPLE_QUESTION_WORDS,
                prompt_tokens=EXAMPLE_PROMPT_TOKENS,
                reply_tokens=EXAMPLE_REPLY_TOKENS,
                cost_credits=price.example_cost_credits(),
            ),
        )
