"""Single-use invite codes for registration by invite: an admin creates them, a registration
spends one in the same transaction that inserts the user. Only the SHA-256 of a code is
stored (the code has 128 random bits, so an unsalted hash is enough)."""

from __future__ import annotations

import datetime as dt
import secrets

import msgspec
from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web.domain.accounts.tokens import token_hash
from web.errors import InviteInvalid, ValidationFailed
from web.logging import get_logger
from web.tables import InviteRow, utc_now

INVITE_CODE_BYTES = 16
MAX_INVITE_TTL_S = 365 * 24 * 3600
INVITE_LIST_LIMIT = 500

log = get_logger(__name__)


class InviteView(msgspec.Struct):
    id: int
    note: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    used_at: dt.datetime | None
    used_by: int | None


class CreatedInvite(msgspec.Struct):
    invite: InviteView
    code: str
    """Shown only in this answer."""


def invite_view(row: InviteRow) -> InviteView:
    return InviteView(
        id=row.id,
        note=row.note,
        created_at=row.created_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
        used_by=row.used_by,
    )


def _usable(code: str) -> ColumnElement[bool]:
    """The WHERE clause of an invite that can still be spent."""
    return (
        (InviteRow.code_hash == token_hash(code))
        & InviteRow.used_at.is_(None)
        & or_(InviteRow.expires_at.is_(None), InviteRow.expires_at > utc_now())
    )


class InvitesService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create(self, created_by: int | None, ttl_s: int, note: str = "") -> CreatedInvite:
        """A new code valid for `ttl_s` seconds (0: until used)."""
        if not 0 <= ttl_s <= MAX_INVITE_TTL_S:
            raise ValidationFailed(
                f"expires_in_s must be 0-{MAX_INVITE_TTL_S}", field="expires_in_s"
            )
        if not note.isprintable():
            raise ValidationFailed("note must not contain control characters", field="note")
        code = secrets.token_urlsafe(INVITE_CODE_BYTES)
        expires_at = utc_now() + dt.timedelta(seconds=ttl_s) if ttl_s else None
        row = InviteRow(
            code_hash=token_hash(code),
            created_by=created_by or None,
            note=note,
            expires_at=expires_at,
        )
        async with self._sessions() as session:
            session.add(row)
            await session.commit()
        log.info("invite_created", invite_id=row.id, by=created_by)
        return CreatedInvite(invite=invite_view(row), code=code)

    async def list(self) -> list[InviteView]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(InviteRow).order_by(InviteRow.id.desc()).limit(INVITE_LIST_LIMIT)
            )
            return [invite_view(row) for row in rows]

    async def check_usable(self, code: str) -> None:
        """A cheap look before the slow password hashing; `spend` decides for real."""
        async with self._sessions() as session:
            found = await session.scalar(select(InviteRow.id).where(_usable(code)))
        if found is None:
            raise InviteInvalid("the invite code is unknown, already used or expired")


async def spend_invite(session: AsyncSession, code: str, user_id: int) -> None:
    """Mark the invite used by `user_id` inside the caller's transaction. The conditional
    update is what makes it single-use: of two transactions spending one code, the second
    waits for the first's row lock (PostgreSQL) or write lock (SQLite) and then matches no
    row."""
    spent = await session.execute(
        update(InviteRow).where(_usable(code)).values(used_at=utc_now(), used_by=user_id)
    )
    if getattr(spent, "rowcount", 0) != 1:
        raise InviteInvalid("the invite code is unknown, already used or expired")


async def unspend_invites_of(session: AsyncSession, user_id: int) -> None:
    """Give back the invite a registration spent when that registration is undone (its ledger
    account could not be opened): the code was never really used."""
    await session.execute(
        update(InviteRow).where(InviteRow.used_by == user_id).values(used_at=None, used_by=None)
    )
