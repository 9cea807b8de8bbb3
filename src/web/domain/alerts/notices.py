"""The notices alert crossings leave for the page (table `alert_notices`): one row per user,
kind and subject, written by a crossing (a later crossing renews it and clears its dismissal),
read while not dismissed, dismissed by its user. Whether a pending notice is still true is the
service's question (it needs the balance and the budgets)."""

from __future__ import annotations

import datetime as dt

import msgspec
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web.domain.alerts.rules import Crossing
from web.tables import AlertNoticeRow

MAX_PENDING_NOTICES = 20
"""Notices read per user at most (one per limit of the user and its keys, plus the balance)."""
RECORD_ATTEMPTS = 2
"""Two checks of one user's replies can both insert the first notice of a kind: the loser of
the unique key tries again, and then renews the winner's row."""


class NoticeView(msgspec.Struct):
    id: int
    kind: str
    """`low_balance` or `budget_use`."""
    message: str
    created_at: dt.datetime
    """When the threshold was (last) crossed."""
    budget_id: str | None = None
    """For `budget_use`: the budget (`user:<id>`, `key:<id>`) and its period."""
    period: str | None = None


def notice_view(row: AlertNoticeRow) -> NoticeView:
    budget_id, _, period = row.subject.rpartition("/")
    return NoticeView(
        id=row.id,
        kind=row.kind,
        message=row.message,
        created_at=row.created_at,
        budget_id=budget_id or None,
        period=period or None,
    )


async def record_notices(
    sessions: async_sessionmaker[AsyncSession],
    user_id: int,
    crossings: list[Crossing],
    now: dt.datetime,
) -> None:
    """Write (or renew, undismissed) the notice of each crossing, in one transaction."""
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            async with sessions.begin() as session:
                for crossing in crossings:
                    await _upsert(session, user_id, crossing, now)
            return
        except IntegrityError:
            if attempt == RECORD_ATTEMPTS:
                raise


async def _upsert(
    session: AsyncSession, user_id: int, crossing: Crossing, now: dt.datetime
) -> None:
    row = await session.scalar(
        select(AlertNoticeRow).where(
            AlertNoticeRow.user_id == user_id,
            AlertNoticeRow.kind == crossing.kind,
            AlertNoticeRow.subject == crossing.subject,
        )
    )
    if row is None:
        row = AlertNoticeRow(user_id=user_id, kind=crossing.kind, subject=crossing.subject)
        session.add(row)
    row.message = crossing.message
    row.created_at = now
    row.dismissed_at = None


async def pending_notices(
    sessions: async_sessionmaker[AsyncSession], user_id: int
) -> list[AlertNoticeRow]:
    """The user's notices not dismissed, newest first."""
    async with sessions() as session:
        rows = await session.scalars(
            select(AlertNoticeRow)
            .where(AlertNoticeRow.user_id == user_id, AlertNoticeRow.dismissed_at.is_(None))
            .order_by(AlertNoticeRow.created_at.desc(), AlertNoticeRow.id.desc())
            .limit(MAX_PENDING_NOTICES)
        )
        return list(rows)


async def dismiss_notice(
    sessions: async_sessionmaker[AsyncSession], user_id: int, notice_id: int, now: dt.datetime
) -> bool:
    """Dismiss one of the user's notices; False when it is not theirs (or does not exist)."""
    async with sessions.begin() as session:
        row = await session.get(AlertNoticeRow, notice_id)
        if row is None or row.user_id != user_id:
            return False
        if row.dismissed_at is None:
            row.dismissed_at = now
        return True
