"""Usage per API key for admins: requests, tokens and credits per UTC day, key and model, each
key's totals and the grand totals, read from the model interactions table (`api_key_id`, one
row per answered reply), as JSON or CSV.

Replies made from a signed-in session (the page, or the API with an access token) carry no key:
they are reported as their own line per user with `key_id` null, so the totals here equal the
per-user report's over the same window. Replies stored before migration 0007 read the same way.
"""

from __future__ import annotations

import csv
import datetime as dt
import io

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web.domain.admin.usage import interactions_between, only_user, usage_window
from web.domain.billing.services import csv_cell
from web.errors import NotFound
from web.tables import ApiKeyRow, ModelInteractionRow, UserRow

NO_KEY_LABEL = "(no API key: signed in)"
KEY_USAGE_CSV_COLUMNS = (
    "day",
    "key_id",
    "key_name",
    "key_prefix",
    "username",
    "model",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "credits",
)


class KeyUsageRow(msgspec.Struct):
    day: str
    key_id: int | None
    """None: replies made from a signed-in session, not with a key."""
    key_name: str | None
    key_prefix: str | None
    user_id: int
    username: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    credits: int


class KeyTotals(msgspec.Struct):
    """One key's (or one user's keyless) totals over the window."""

    key_id: int | None
    key_name: str | None
    key_prefix: str | None
    user_id: int
    username: str
    revoked: bool
    requests: int
    prompt_tokens: int
    completion_tokens: int
    credits: int


class KeyUsageReport(msgspec.Struct):
    since: str
    until: str
    user: str | None
    key_id: int | None
    rows: list[KeyUsageRow]
    keys: list[KeyTotals]
    total_requests: int
    total_prompt_tokens: int
    total_completion_tokens: int
    total_credits: int


_KeyOf = tuple[int | None, str | None, str | None, int, str, bool]
"""(key id, name, prefix, user id, username, revoked): who a usage line belongs to."""


async def admin_key_usage(
    sessions: async_sessionmaker[AsyncSession],
    *,
    username: str | None = None,
    key_id: int | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> KeyUsageReport:
    """Usage per UTC day, API key and model (every key, a user's, or one); the caller checked
    admin. An unknown `username` or `key_id` is NotFound."""
    since, until = usage_window(since, until)
    query = interactions_between(
        since,
        until,
        ModelInteractionRow.created_at,
        ModelInteractionRow.api_key_id,
        ApiKeyRow.name,
        ApiKeyRow.prefix,
        ApiKeyRow.revoked_at,
        ModelInteractionRow.user_id,
        UserRow.username,
        ModelInteractionRow.model_id,
        ModelInteractionRow.prompt_tokens,
        ModelInteractionRow.completion_tokens,
        ModelInteractionRow.credits_charged,
    ).outerjoin(ApiKeyRow, ApiKeyRow.id == ModelInteractionRow.api_key_id)
    async with sessions() as session:
        query = await only_user(session, query, username)
        if key_id is not None:
            if await session.get(ApiKeyRow, key_id) is None:
                raise NotFound(f"no API key {key_id}", field="key")
            query = query.where(ModelInteractionRow.api_key_id == key_id)
        rows = (await session.execute(query)).all()
    # Grouped here, not in SQL: day truncation differs between SQLite and PostgreSQL.
    groups: dict[tuple[str, _KeyOf, str], list[int]] = {}
    for created_at, key_id, key_name, prefix, revoked_at, user_id, user, model, *counts in rows:
        day = created_at.astimezone(dt.UTC).date().isoformat()
        owner: _KeyOf = (key_id, key_name, prefix, user_id, user, revoked_at is not None)
        _add(groups.setdefault((day, owner, model), [0, 0, 0, 0]), counts)
    per_key: dict[_KeyOf, list[int]] = {}
    usage_rows = []
    for (day, owner, model), t in sorted(groups.items(), key=_order):
        usage_rows.append(KeyUsageRow(day, *owner[:5], model, *t))
        _add(per_key.setdefault(owner, [0, 0, 0, 0]), t[1:], requests=t[0])
    keys = [KeyTotals(*owner, *t) for owner, t in sorted(per_key.items(), key=_owner_order)]
    return KeyUsageReport(
        since=since.isoformat(),
        until=until.isoformat(),
        user=username,
        key_id=key_id,
        rows=usage_rows,
        keys=keys,
        total_requests=sum(k.requests for k in keys),
        total_prompt_tokens=sum(k.prompt_tokens for k in keys),
        total_completion_tokens=sum(k.completion_tokens for k in keys),
        total_credits=sum(k.credits for k in keys),
    )


def _add(totals: list[int], counts: list[int], *, requests: int = 1) -> None:
    """Add one reply's (or one line's) prompt, completion and credits, and its requests."""
    totals[0] += requests
    for index, value in enumerate(counts, start=1):
        totals[index] += value


def _owner_order(item: tuple[_KeyOf, list[int]]) -> tuple[str, int]:
    """By username, then key id (the keyless line first)."""
    owner = item[0]
    return owner[4], -1 if owner[0] is None else owner[0]


def _order(item: tuple[tuple[str, _KeyOf, str], list[int]]) -> tuple[str, str, int, str]:
    day, owner, model = item[0]
    return day, owner[4], -1 if owner[0] is None else owner[0], model


def key_usage_csv(report: KeyUsageReport) -> str:
    """The report as CSV, a `total` line last; a keyless line is named `NO_KEY_LABEL`; cells
    escaped as the transactions export."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(KEY_USAGE_CSV_COLUMNS)
    for row in key_usage_table(report):
        writer.writerow([csv_cell(cell) for cell in row])
    return out.getvalue()


def key_usage_table(report: KeyUsageReport) -> list[list[object]]:
    """The rows as the CSV and the admin page show them (columns `KEY_USAGE_CSV_COLUMNS`),
    with the `total` line last."""
    table: list[list[object]] = []
    for row in report.rows:
        name = NO_KEY_LABEL if row.key_id is None else row.key_name
        table.append(
            [
                row.day,
                row.key_id,
                name,
                row.key_prefix,
                row.username,
                row.model,
                row.requests,
                row.prompt_tokens,
                row.completion_tokens,
                row.credits,
            ]
        )
    totals = [
        report.total_requests,
        report.total_prompt_tokens,
        report.total_completion_tokens,
        report.total_credits,
    ]
    table.append(["total", "", "", "", "", "", *totals])
    return table
