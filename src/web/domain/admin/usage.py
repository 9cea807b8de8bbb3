"""Usage for admins: requests, tokens and credits per UTC day, user and model, with totals,
read from the model interactions table (one row per answered reply), as JSON or CSV.

Credits are what each reply's capture took when it settled; refunds are ledger events of
their own (the user's history and `ledgerchat audit` show them) and are not netted here.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import msgspec
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web.domain.billing.services import MAX_USAGE_DAYS, csv_cell
from web.errors import NotFound, ValidationFailed
from web.tables import ModelInteractionRow, UserRow

DEFAULT_USAGE_DAYS = 30
USAGE_CSV_COLUMNS = (
    "day",
    "username",
    "model",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "credits",
)


class AdminUsageRow(msgspec.Struct):
    day: str
    user_id: int
    username: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    credits: int


class AdminUsageReport(msgspec.Struct):
    since: str
    until: str
    user: str | None
    rows: list[AdminUsageRow]
    total_requests: int
    total_prompt_tokens: int
    total_completion_tokens: int
    total_credits: int


def usage_window(since: dt.date | None, until: dt.date | None) -> tuple[dt.date, dt.date]:
    """[since, until] in whole UTC days; default the last 30 days up to today."""
    until = until or dt.datetime.now(dt.UTC).date()
    # Clamped: date arithmetic before 0001-01-01 raises OverflowError.
    floor = dt.date.min + dt.timedelta(days=DEFAULT_USAGE_DAYS)
    since = since or max(floor, until) - dt.timedelta(days=DEFAULT_USAGE_DAYS - 1)
    if since > until or (until - since).days >= MAX_USAGE_DAYS:
        raise ValidationFailed(f"since..until must be 1-{MAX_USAGE_DAYS} days, since first")
    return since, until


def interactions_between(since: dt.date, until: dt.date, *columns: Any) -> Select[Any]:
    """`columns` of every reply stored in [since, until] (whole UTC days), joined to its user."""
    start = dt.datetime.combine(since, dt.time(), dt.UTC)
    end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time(), dt.UTC)
    return (
        select(*columns)
        .join(UserRow, UserRow.id == ModelInteractionRow.user_id)
        .where(ModelInteractionRow.created_at >= start, ModelInteractionRow.created_at < end)
    )


async def only_user(session: AsyncSession, query: Select[Any], username: str | None) -> Select[Any]:
    """`query` narrowed to `username`'s replies (unchanged when None); an unknown user is
    NotFound."""
    if username is None:
        return query
    user_id = await session.scalar(select(UserRow.id).where(UserRow.username == username))
    if user_id is None:
        raise NotFound(f"no user {username!r}", field="user")
    return query.where(ModelInteractionRow.user_id == user_id)


async def admin_usage(
    sessions: async_sessionmaker[AsyncSession],
    *,
    username: str | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> AdminUsageReport:
    """Every user's (or `username`'s) usage per UTC day and model; the caller checked admin."""
    since, until = usage_window(since, until)
    query = interactions_between(
        since,
        until,
        ModelInteractionRow.created_at,
        ModelInteractionRow.user_id,
        UserRow.username,
        ModelInteractionRow.model_id,
        ModelInteractionRow.prompt_tokens,
        ModelInteractionRow.completion_tokens,
        ModelInteractionRow.credits_charged,
    )
    async with sessions() as session:
        query = await only_user(session, query, username)
        rows = (await session.execute(query)).all()
    # Grouped here, not in SQL: day truncation differs between SQLite and PostgreSQL.
    groups: dict[tuple[str, str, int, str], list[int]] = {}
    for created_at, user_id, name, model, prompt, completion, credits in rows:
        day = created_at.astimezone(dt.UTC).date().isoformat()
        totals = groups.setdefault((day, name, user_id, model), [0, 0, 0, 0])
        totals[0] += 1
        totals[1] += prompt
        totals[2] += completion
        totals[3] += credits
    usage_rows = [
        AdminUsageRow(day, user_id, name, model, t[0], t[1], t[2], t[3])
        for (day, name, user_id, model), t in sorted(groups.items())
    ]
    return AdminUsageReport(
        since=since.isoformat(),
        until=until.isoformat(),
        user=username,
        rows=usage_rows,
        total_requests=sum(r.requests for r in usage_rows),
        total_prompt_tokens=sum(r.prompt_tokens for r in usage_rows),
        total_completion_tokens=sum(r.completion_tokens for r in usage_rows),
        total_credits=sum(r.credits for r in usage_rows),
    )


def usage_csv(report: AdminUsageReport) -> str:
    """The report as CSV, a `total` line last; cells escaped as the transactions export."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(USAGE_CSV_COLUMNS)
    for row in report.rows:
        writer.writerow([csv_cell(getattr(row, column)) for column in USAGE_CSV_COLUMNS])
    writer.writerow(
        [
            "total",
            "",
            "",
            report.total_requests,
            report.total_prompt_tokens,
            report.total_completion_tokens,
            report.total_credits,
        ]
    )
    return out.getvalue()
