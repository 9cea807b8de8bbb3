"""Login lockout: failed logins of one account from one client address, counted in the
database so that every process shares the count (see `LoginLockout.claim` for why a failure is
recorded before the password is checked)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web.errors import LoginLocked
from web.logging import get_logger
from web.settings import AuthSettings
from web.tables import LoginAttemptRow, utc_now

log = get_logger(__name__)


class LoginLockout:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], auth: AuthSettings) -> None:
        self._sessions = sessions
        self._auth = auth

    async def claim(self, name: str, user_id: int | None, client_address: str) -> int:
        """Record this attempt as a failure, then check the lock; returns the attempt's id.

        Why in this order: checking first and recording after the (slow) password check let
        concurrent requests all pass the check before any failure was stored. Here each
        request commits its row in its own transaction before it counts, so of any two
        concurrent requests the one that counts later sees the other's row; ordered by when
        they count, the k-th allowed request sees at least k-1 others, and no more than the
        limit can get through within a window, with any number of app processes, on SQLite
        and PostgreSQL alike, without locks or a serializable transaction. Concurrent
        requests may see each other and be refused a little early; that errs on the safe
        side. A refused attempt deletes its row again (as before, attempts made while locked
        do not extend the lock); a successful one turns it into a success. A request that
        dies between these steps leaves a failure behind, which also errs on the safe side.
        """
        async with self._sessions() as session:
            attempt = LoginAttemptRow(
                username=name, user_id=user_id, client_address=client_address, succeeded=False
            )
            session.add(attempt)
            await session.commit()
            try:
                await self._check_not_locked(session, attempt, client_address)
            except LoginLocked:
                await session.execute(
                    delete(LoginAttemptRow).where(LoginAttemptRow.id == attempt.id)
                )
                await session.commit()
                raise
            return attempt.id

    async def _check_not_locked(
        self, session: AsyncSession, attempt: LoginAttemptRow, client_address: str
    ) -> None:
        """Locked when `lockout_failures` other failures (pending ones included) of the same
        account from this client lie in the window after its last success. An unknown name
        is counted by the name typed instead of an account."""
        if attempt.user_id is not None:
            same_key = LoginAttemptRow.user_id == attempt.user_id
        else:
            same_key = LoginAttemptRow.user_id.is_(None) & (
                LoginAttemptRow.username == attempt.username
            )
        window_start = utc_now() - dt.timedelta(seconds=self._auth.lockout_window_s)
        last_success = await session.scalar(
            select(func.max(LoginAttemptRow.created_at)).where(
                same_key,
                LoginAttemptRow.client_address == client_address,
                LoginAttemptRow.succeeded.is_(True),
            )
        )
        since = max(window_start, last_success) if last_success else window_start
        failures = list(
            await session.scalars(
                select(LoginAttemptRow.created_at)
                .where(
                    same_key,
                    LoginAttemptRow.client_address == client_address,
                    LoginAttemptRow.succeeded.is_(False),
                    LoginAttemptRow.created_at > since,
                    LoginAttemptRow.id != attempt.id,
                )
                .order_by(LoginAttemptRow.created_at.desc())
                .limit(self._auth.lockout_failures)
            )
        )
        if len(failures) >= self._auth.lockout_failures:
            # Unlocks when the oldest of the last N failures leaves the window.
            unlock_at = failures[-1] + dt.timedelta(seconds=self._auth.lockout_window_s)
            retry_after_s = max(1, int((unlock_at - utc_now()).total_seconds()) + 1)
            log.warning("login_locked", username=attempt.username, client_address=client_address)
            raise LoginLocked(
                "too many failed logins; try again later", retry_after_s=retry_after_s
            )
