"""Disabling and enabling a user. Disabling is one transaction that marks the user and
revokes every refresh-token family and API key they hold, so nothing issued before it keeps
working; every request and token refresh also checks the mark. Enabling clears the mark only:
the revoked keys stay revoked and the user signs in again."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web.domain.accounts.rules import user_view
from web.domain.accounts.schemas import UserView
from web.errors import NotFound
from web.logging import get_logger
from web.tables import ApiKeyRow, RefreshSessionRow, UserRow, utc_now

log = get_logger(__name__)


async def _user(session: AsyncSession, user_id: int) -> UserRow:
    row = await session.get(UserRow, user_id)
    if row is None or row.account_id is None:
        raise NotFound(f"user {user_id} does not exist")
    return row


async def disable_user(sessions: async_sessionmaker[AsyncSession], user_id: int) -> UserView:
    now = utc_now()
    async with sessions() as session:
        row = await _user(session, user_id)
        if row.disabled_at is None:
            row.disabled_at = now
        await session.execute(
            update(RefreshSessionRow)
            .where(RefreshSessionRow.user_id == user_id, RefreshSessionRow.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason="user_disabled")
        )
        await session.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.user_id == user_id, ApiKeyRow.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await session.commit()
    log.warning("user_disabled", user_id=user_id)
    return user_view(row)


async def enable_user(sessions: async_sessionmaker[AsyncSession], user_id: int) -> UserView:
    async with sessions() as session:
        row = await _user(session, user_id)
        row.disabled_at = None
        await session.commit()
    log.info("user_enabled", user_id=user_id)
    return user_view(row)
