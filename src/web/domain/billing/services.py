"""Reads of money for one user: balance, transaction pages from the ledger, CSV export, and
usage per day and model from the model interactions table."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger import HistoryEntry, Ledger
from web.domain.accounts.schemas import Identity
from web.domain.billing.history import HistoryPage, grouped_history
from web.domain.billing.schemas import TransactionsPage, TransactionView, UsageReport, UsageRow
from web.domain.chat.schemas import BalanceView
from web.errors import ValidationFailed
from web.ledger_calls import counted
from web.tables import ModelInteractionRow

TRANSACTION_TYPES = (
    "credits_added",
    "hold_placed",
    "hold_captured",
    "hold_released",
    "charged",
    "refunded",
)
MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50
MAX_CSV_ROWS = 10_000
MAX_USAGE_DAYS = 366
# Sign of each event's effect on the posted balance (holds move only `available`).
POSTED_SIGN = {"credits_added": 1, "refunded": 1, "hold_captured": -1, "charged": -1}
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = (
    "event_id",
    "occurred_at",
    "type",
    "amount",
    "balance_after",
    "available_after",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "price_version",
    "hold_id",
    "reason",
    "note",
)


def csv_cell(value: object) -> object:
    """One exported cell. Text a spreadsheet would run as a formula (OWASP's CSV injection
    rule: a leading = + - @, tab or carriage return) gets a leading `'`, so a note or reason
    chosen by a user or an admin stays text; numbers stay numbers."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(CSV_FORMULA_STARTS):
        return "'" + value
    return value


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def transaction_view(entry: HistoryEntry) -> TransactionView:
    """One ledger history entry as a row (the entry carries the balance after it)."""
    kind = entry.event_type
    model = entry.metadata.get("model")
    price_version = entry.metadata.get("price_version")
    return TransactionView(
        event_id=entry.event_id,
        type=kind,
        amount=POSTED_SIGN[kind] * entry.amount if kind in POSTED_SIGN else entry.amount,
        balance_after=entry.posted_after,
        available_after=entry.available_after,
        occurred_at=entry.time,
        model=None if model is None else str(model),
        prompt_tokens=_int_or_none(entry.metadata.get("prompt_tokens")),
        completion_tokens=_int_or_none(entry.metadata.get("completion_tokens")),
        price_version=None if price_version is None else str(price_version),
        token_count=_str_or_none(entry.metadata.get("token_count")),
        hold_id=entry.hold_id,
        reason=entry.reason,
        note=entry.note or None,
    )


def check_types(types: Sequence[str] | None) -> list[str] | None:
    if not types:
        return None
    unknown = sorted(set(types) - set(TRANSACTION_TYPES))
    if unknown:
        raise ValidationFailed(
            f"unknown transaction type(s) {', '.join(unknown)}; "
            f"known: {', '.join(TRANSACTION_TYPES)}",
            field="type",
        )
    return list(types)


class BillingService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], ledger: Ledger) -> None:
        self._sessions = sessions
        self._ledger = ledger

    async def balance(self, identity: Identity) -> BalanceView:
        return await self.balance_of(identity.account_id)

    async def balance_of(self, account_id: str) -> BalanceView:
        async with counted("balance"):
            balance = await self._ledger.balance(account_id)
        return BalanceView(posted=balance.posted, held=balance.held, available=balance.available)

    async def transactions(
        self,
        identity: Identity,
        *,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        types: Sequence[str] | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> TransactionsPage:
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValidationFailed(f"limit must be 1-{MAX_PAGE_SIZE}", field="limit")
        if since is not None and until is not None and since > until:
            raise ValidationFailed("since must not be after until", field="since")
        async with counted("history"):
            page = await self._ledger.history(
                identity.account_id,
                cursor=cursor,
                limit=limit,
                types=check_types(types),
                since=since,
                until=until,
            )
        return TransactionsPage(
            transactions=[transaction_view(entry) for entry in page.entries],
            next_cursor=page.next_cursor,
        )

    async def history(
        self, identity: Identity, *, cursor: str | None = None, limit: int = DEFAULT_PAGE_SIZE
    ) -> HistoryPage:
        """One item per reply (its hold's events folded together), top-up, refund or charge,
        newest first (web.domain.billing.history)."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValidationFailed(f"limit must be 1-{MAX_PAGE_SIZE}", field="limit")
        return await grouped_history(self._ledger, identity.account_id, cursor=cursor, limit=limit)

    async def transactions_csv(
        self,
        identity: Identity,
        *,
        types: Sequence[str] | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> str:
        """Every matching row (up to MAX_CSV_ROWS), newest first, as CSV text."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        cursor: str | None = None
        written = 0
        while written < MAX_CSV_ROWS:
            page = await self.transactions(
                identity, cursor=cursor, limit=MAX_PAGE_SIZE, types=types, since=since, until=until
            )
            for row in page.transactions:
                values = [getattr(row, column) for column in CSV_COLUMNS]
                writer.writerow([csv_cell(value) for value in values])
                written += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return out.getvalue()

    async def usage(
        self, identity: Identity, *, since: dt.date | None = None, until: dt.date | None = None
    ) -> UsageReport:
        """Requests, tokens and credits per UTC day and model, from the interactions table."""
        until = until or dt.datetime.now(dt.UTC).date()
        # Clamped, and the day's end taken inclusive: date arithmetic past 0001-01-01 or
        # 9999-12-31 raises OverflowError.
        since = since or max(dt.date.min + dt.timedelta(days=29), until) - dt.timedelta(days=29)
        if since > until or (until - since).days >= MAX_USAGE_DAYS:
            raise ValidationFailed(f"since..until must be 1-{MAX_USAGE_DAYS} days, since first")
        start = dt.datetime.combine(since, dt.time(), dt.UTC)
        last = dt.datetime.combine(until, dt.time.max, dt.UTC)
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(
                        ModelInteractionRow.created_at,
                        ModelInteractionRow.model_id,
                        ModelInteractionRow.prompt_tokens,
                        ModelInteractionRow.completion_tokens,
                        ModelInteractionRow.credits_charged,
                    ).where(
                        ModelInteractionRow.user_id == identity.user_id,
                        ModelInteractionRow.created_at >= start,
                        ModelInteractionRow.created_at <= last,
                    )
                )
            ).all()
        # Grouped here, not in SQL: day truncation differs between SQLite and PostgreSQL.
        groups: dict[tuple[str, str], list[int]] = {}
        for created_at, model, prompt, completion, credits in rows:
            key = (created_at.date().isoformat(), model)
            totals = groups.setdefault(key, [0, 0, 0, 0])
            totals[0] += 1
            totals[1] += prompt
            totals[2] += completion
            totals[3] += credits
        usage_rows = [
            UsageRow(
                day=day,
                model=model,
                requests=t[0],
                prompt_tokens=t[1],
                completion_tokens=t[2],
                credits=t[3],
            )
            for (day, model), t in sorted(groups.items())
        ]
        return UsageReport(
            since=since.isoformat(),
            until=until.isoformat(),
            rows=usage_rows,
            total_credits=sum(r.credits for r in usage_rows),
            total_completion_tokens=sum(r.completion_tokens for r in usage_rows),
        )

    async def count_interactions(self, identity: Identity) -> int:
        async with self._sessions() as session:
            return int(
                await session.scalar(
                    select(func.count())
                    .select_from(ModelInteractionRow)
                    .where(ModelInteractionRow.user_id == identity.user_id)
                )
                or 0
            )
