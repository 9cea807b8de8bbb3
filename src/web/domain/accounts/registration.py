"""Self-service registration (the API's /api/auth/register and the UI's form): the
registration mode (`open`, `invite`, `closed`), the per-address signup limit, then the
account itself. Operators create users with `ledgerchat user create`, which bypasses both."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web.domain.accounts.invites import InvitesService
from web.domain.accounts.schemas import UserView
from web.domain.accounts.services import AccountsService
from web.errors import InviteInvalid, RateLimited, RegistrationClosed
from web.logging import get_logger
from web.settings import AuthSettings
from web.tables import SignupAttemptRow, utc_now

SIGNUP_WINDOW_S = 3600

log = get_logger(__name__)


class RegistrationService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        accounts: AccountsService,
        invites: InvitesService,
        auth: AuthSettings,
    ) -> None:
        self._sessions = sessions
        self._accounts = accounts
        self._invites = invites
        self._auth = auth

    @property
    def mode(self) -> str:
        return self._auth.registration_mode

    async def sign_up(
        self,
        username: str,
        email: str,
        password: str,
        *,
        invite_code: str | None,
        client_address: str,
    ) -> UserView:
        """Register under the configured mode. The cheap checks (mode, invite, name, email,
        password rules) come first, so that a typo does not use up the address's quota and
        a refused request costs no argon2 work."""
        if self.mode == "closed":
            raise RegistrationClosed("registration is closed; ask an administrator for an account")
        code = invite_code.strip() if invite_code else None
        if self.mode == "invite":
            if not code:
                raise InviteInvalid("registration needs an invite code", field="invite_code")
            await self._invites.check_usable(code)
        else:
            code = None  # an invite given in open mode is not spent
        self._accounts.check_new_user(username, email, password)
        await self._claim_signup(client_address)
        return await self._accounts.register(username, email, password, invite_code=code)

    async def _claim_signup(self, client_address: str) -> None:
        """Record the attempt, then count: the same claim-then-count order as the login
        lockout (see LoginLockout.claim), so that concurrent registrations from
        one address cannot all pass the check before any of them is stored."""
        limit = self._auth.signups_per_address_per_hour
        if limit <= 0:
            return
        window_start = utc_now() - dt.timedelta(seconds=SIGNUP_WINDOW_S)
        async with self._sessions() as session:
            attempt = SignupAttemptRow(client_address=client_address[:64])
            # Attempts older than the window count for nothing: the address's rows stay few.
            await session.execute(
                delete(SignupAttemptRow).where(
                    SignupAttemptRow.client_address == attempt.client_address,
                    SignupAttemptRow.created_at <= window_start,
                )
            )
            session.add(attempt)
            await session.commit()
            earlier = list(
                await session.scalars(
                    select(SignupAttemptRow.created_at)
                    .where(
                        SignupAttemptRow.client_address == attempt.client_address,
                        SignupAttemptRow.created_at > window_start,
                        SignupAttemptRow.id != attempt.id,
                    )
                    .order_by(SignupAttemptRow.created_at.desc())
                    .limit(limit)
                )
            )
            if len(earlier) < limit:
                return
            await session.execute(delete(SignupAttemptRow).where(SignupAttemptRow.id == attempt.id))
            await session.commit()
        frees_at = earlier[-1] + dt.timedelta(seconds=SIGNUP_WINDOW_S)
        retry_after_s = max(1, int((frees_at - utc_now()).total_seconds()) + 1)
        log.warning("signup_limited", client_address=client_address)
        raise RateLimited(
            "too many registrations from this address; try again later",
            retry_after_s=retry_after_s,
        )
