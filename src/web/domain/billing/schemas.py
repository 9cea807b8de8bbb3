"""Wire types of balance, transactions and usage."""

from __future__ import annotations

import datetime as dt

import msgspec


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
