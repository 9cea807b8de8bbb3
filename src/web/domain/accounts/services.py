"""Accounts: registration (with the signup grant in the ledger), login with lockout, rotating
refresh tokens with reuse detection, logout, and turning credentials into an Identity."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger import Ledger
from web.domain.accounts.invites import spend_invite, unspend_invites_of
from web.domain.accounts.lockout import LoginLockout
from web.domain.accounts.passwords import PasswordHashing
from web.domain.accounts.rules import (
    MAX_EMAIL_CHARS,
    check_email,
    check_password,
    check_username,
    identity_of,
    user_view,
)
from web.domain.accounts.schemas import Identity, Role, TokenPair, UserView
from web.domain.accounts.tokens import AccessTokens, InvalidToken, new_refresh_token, token_hash
from web.errors import (
    AccountDisabled,
    AlreadyExists,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    ValidationFailed,
)
from web.ledger_calls import counted
from web.logging import get_logger
from web.settings import AuthSettings, BillingSettings
from web.tables import LoginAttemptRow, RefreshSessionRow, UserRow, utc_now

USER_LIST_LIMIT = 500

log = get_logger(__name__)


class AccountsService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ledger: Ledger,
        auth: AuthSettings,
        billing: BillingSettings,
    ) -> None:
        self._sessions = sessions
        self._ledger = ledger
        self._auth = auth
        self._billing = billing
        self._passwords = PasswordHashing(auth)
        self._lockout = LoginLockout(sessions, auth)
        self.access_tokens = AccessTokens(auth.jwt_secret, auth.access_token_ttl_s)

    # -- registration -------------------------------------------------------------------
    def check_new_user(self, username: str, email: str, password: str) -> tuple[str, str]:
        """The rules a new account must meet; returns the normalised username and email."""
        username = username.strip()
        email = email.strip().lower()
        check_username(username)
        check_email(email)
        check_password(password, username, self._auth, email)
        return username, email

    async def register(
        self,
        username: str,
        email: str,
        password: str,
        *,
        role: Role = "user",
        invite_code: str | None = None,
    ) -> UserView:
        """Create the user, open their ledger account and grant the signup credits. With an
        `invite_code`, the invite is spent in the transaction that inserts the user."""
        username, email = self.check_new_user(username, email, password)
        password_hash = await self._passwords.hash(password)
        async with self._sessions() as session:
            taken = await session.scalar(
                select(func.count())
                .select_from(UserRow)
                .where(
                    (func.lower(UserRow.username) == username.lower())
                    | (func.lower(UserRow.email) == email)
                )
            )
            if taken:
                # Concurrent registrations can all pass this check; the unique indexes on
                # lower(username) and lower(email) (migration 0002) then refuse all but one,
                # and the IntegrityError below gives the same answer.
                raise AlreadyExists("username or email is already registered")
            row = UserRow(username=username, email=email, password_hash=password_hash, role=role)
            session.add(row)
            try:
                if invite_code is not None:
                    await session.flush()
                    await spend_invite(session, invite_code, row.id)
                await session.commit()
            except IntegrityError as exc:
                raise AlreadyExists("username or email is already registered") from exc
        try:
            account_id = await self._open_account(row)
        except BaseException:
            # Without its ledger account the user could never log in; free the name (and the
            # invite it spent) again.
            async with self._sessions() as session:
                await unspend_invites_of(session, row.id)
                await session.execute(delete(UserRow).where(UserRow.id == row.id))
                await session.commit()
            raise
        async with self._sessions() as session:
            await session.execute(
                update(UserRow).where(UserRow.id == row.id).values(account_id=account_id)
            )
            await session.commit()
        row.account_id = account_id
        log.info("user_registered", user_id=row.id, role=role)
        return user_view(row)

    async def _open_account(self, row: UserRow) -> str:
        async with counted("open_account"):
            account_id = str(await self._ledger.open_account(f"user:{row.id}"))
        if self._billing.signup_grant_credits > 0:
            async with counted("add_credits"):
                await self._ledger.add_credits(
                    account_id,
                    self._billing.signup_grant_credits,
                    source="signup_grant",
                    note="signup grant",
                    idempotency_key=f"signup-grant:{row.id}",
                )
        return account_id

    async def get_user(self, user_id: int) -> UserView:
        async with self._sessions() as session:
            row = await session.get(UserRow, user_id)
        if row is None or row.account_id is None:
            raise NotFound(f"user {user_id} does not exist")
        return user_view(row)

    async def identity_for(self, user_id: int) -> Identity:
        """Act as this user (the CLI creating a key for them, tests)."""
        async with self._sessions() as session:
            row = await session.get(UserRow, user_id)
        if row is None or row.account_id is None:
            raise NotFound(f"user {user_id} does not exist")
        return identity_of(row, "internal")

    async def find_user(self, username: str) -> UserView:
        async with self._sessions() as session:
            row = (
                await session.scalars(
                    select(UserRow).where(func.lower(UserRow.username) == username.strip().lower())
                )
            ).one_or_none()
        if row is None or row.account_id is None:
            raise NotFound(f"user {username!r} does not exist")
        return user_view(row)

    async def list_users(self, *, limit: int = USER_LIST_LIMIT) -> list[UserView]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(UserRow)
                .where(UserRow.account_id.is_not(None))
                .order_by(UserRow.id)
                .limit(min(limit, USER_LIST_LIMIT))
            )
            return [user_view(row) for row in rows]

    # -- login, refresh, logout ---------------------------------------------------------
    async def login(self, username: str, password: str, client_address: str) -> TokenPair:
        """Check the password; 5 failures in the window lock this account for this client."""
        name = username.strip().lower()[:MAX_EMAIL_CHARS]
        if not name.isprintable():
            # No username or email holds control characters; refuse before they are stored
            # as a login attempt (PostgreSQL text cannot even hold NUL).
            raise ValidationFailed("username must not contain control characters", field="username")
        async with self._sessions() as session:
            # Usernames cannot contain '@' and emails must, and both are unique regardless of
            # case (migration 0002), so at most one row matches.
            row = (
                await session.scalars(
                    select(UserRow).where(
                        (func.lower(UserRow.username) == name) | (func.lower(UserRow.email) == name)
                    )
                )
            ).one_or_none()
        user_id = row.id if row is not None else None
        attempt_id = await self._lockout.claim(name, user_id, client_address)
        if row is None:
            ok = await self._passwords.verify_absent(password)
        else:
            ok = await self._passwords.verify(row.password_hash, password)
        if not ok or row is None or row.account_id is None:
            log.warning("login_failed", username=name, client_address=client_address)
            raise NotAuthenticated("wrong username or password")
        if row.disabled_at is not None:
            # Told only to whoever knows the password, so it reveals nothing to a guesser.
            raise AccountDisabled("this account is disabled; ask an administrator")
        async with self._sessions() as session:
            await session.execute(
                update(LoginAttemptRow)
                .where(LoginAttemptRow.id == attempt_id)
                .values(succeeded=True)
            )
            user = await session.get(UserRow, row.id)
            if user is None:
                raise NotAuthenticated("wrong username or password")
            if user.disabled_at is not None:
                raise AccountDisabled("this account is disabled; ask an administrator")
            if self._passwords.needs_rehash(user.password_hash):
                user.password_hash = await self._passwords.hash(password)
                log.info("password_rehashed", user_id=user.id)
            pair = self._new_session(session, user, family_id=str(uuid.uuid4()))
            await session.commit()
        log.info("user_login", user_id=user.id, client_address=client_address)
        return pair

    def _new_session(self, session: AsyncSession, row: UserRow, *, family_id: str) -> TokenPair:
        refresh_token = new_refresh_token()
        session.add(
            RefreshSessionRow(
                family_id=family_id,
                user_id=row.id,
                token_hash=token_hash(refresh_token),
                expires_at=utc_now() + dt.timedelta(seconds=self._auth.refresh_token_ttl_s),
            )
        )
        return TokenPair(
            access_token=self.access_tokens.issue(row.id, row.role, family_id),
            refresh_token=refresh_token,
            expires_in=self._auth.access_token_ttl_s,
        )

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the presented token is spent; presenting a spent one revokes its family."""
        async with self._sessions() as session:
            current = await session.scalar(
                select(RefreshSessionRow).where(
                    RefreshSessionRow.token_hash == token_hash(refresh_token)
                )
            )
            if current is None:
                raise NotAuthenticated("unknown refresh token")
            if current.rotated_at is not None:
                await self._revoke_family(session, current.family_id, "reuse_detected")
                await session.commit()
                log.warning("refresh_token_reused", user_id=current.user_id)
                raise NotAuthenticated("refresh token was already used; the session is revoked")
            if current.revoked_at is not None:
                raise NotAuthenticated("the session is revoked")
            if current.expires_at <= utc_now():
                raise NotAuthenticated("refresh token expired")
            # Conditional update: of two concurrent refreshes with one token only one wins.
            spent = await session.execute(
                update(RefreshSessionRow)
                .where(RefreshSessionRow.id == current.id, RefreshSessionRow.rotated_at.is_(None))
                .values(rotated_at=utc_now())
            )
            if getattr(spent, "rowcount", 0) != 1:
                await self._revoke_family(session, current.family_id, "reuse_detected")
                await session.commit()
                raise NotAuthenticated("refresh token was already used; the session is revoked")
            user = await session.get(UserRow, current.user_id)
            if user is None:
                raise NotAuthenticated("the user no longer exists")
            if user.disabled_at is not None:
                await session.rollback()
                raise NotAuthenticated("this account is disabled")
            pair = self._new_session(session, user, family_id=current.family_id)
            await session.commit()
        return pair

    async def _revoke_family(self, session: AsyncSession, family_id: str, reason: str) -> None:
        await session.execute(
            update(RefreshSessionRow)
            .where(RefreshSessionRow.family_id == family_id, RefreshSessionRow.revoked_at.is_(None))
            .values(revoked_at=utc_now(), revoked_reason=reason)
        )

    async def logout(self, identity: Identity, refresh_token: str | None) -> None:
        """Revoke the session the refresh token belongs to, or every session of the user.
        An API key cannot: a leaked key must not sign its owner out everywhere."""
        if not identity.is_session:
            raise PermissionDenied("signing out needs a signed-in session, not an API key")
        async with self._sessions() as session:
            if refresh_token is None:
                await session.execute(
                    update(RefreshSessionRow)
                    .where(
                        RefreshSessionRow.user_id == identity.user_id,
                        RefreshSessionRow.revoked_at.is_(None),
                    )
                    .values(revoked_at=utc_now(), revoked_reason="logout")
                )
            else:
                current = await session.scalar(
                    select(RefreshSessionRow).where(
                        RefreshSessionRow.token_hash == token_hash(refresh_token),
                        RefreshSessionRow.user_id == identity.user_id,
                    )
                )
                if current is None:
                    raise NotFound("no such session for this user")
                await self._revoke_family(session, current.family_id, "logout")
            await session.commit()
        log.info("user_logout", user_id=identity.user_id)

    # -- credentials to identity ------------------------------------------------------------
    async def identity_from_access_token(self, token: str) -> Identity:
        try:
            claims = self.access_tokens.verify(token)
        except InvalidToken as exc:
            raise NotAuthenticated(f"invalid access token: {exc}") from exc
        async with self._sessions() as session:
            row = await session.get(UserRow, claims.user_id)
            # Logout and refresh-token reuse revoke every token of the family: the access
            # tokens issued for that sign-in end with it, not at their expiry.
            signed_in = await session.scalar(
                select(
                    exists().where(
                        RefreshSessionRow.family_id == claims.session_family,
                        RefreshSessionRow.user_id == claims.user_id,
                        RefreshSessionRow.revoked_at.is_(None),
                    )
                )
            )
        if row is None or row.account_id is None:
            raise NotAuthenticated("the user no longer exists")
        if row.disabled_at is not None:
            raise NotAuthenticated("this account is disabled")
        if not signed_in:
            raise NotAuthenticated("this session was signed out or revoked")
        return identity_of(row, "access_token")

    async def set_role(self, user_id: int, role: Role) -> UserView:
        async with self._sessions() as session:
            row = await session.get(UserRow, user_id)
            if row is None or row.account_id is None:
                raise NotFound(f"user {user_id} does not exist")
            row.role = role
            await session.commit()
        return user_view(row)
