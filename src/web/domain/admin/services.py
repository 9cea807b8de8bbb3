"""Admin actions; every method checks the caller is an admin signed in with a password (the
CLI passes an internal admin identity), so the rule holds for the API, the UI and the CLI
alike, and an admin's leaked API key cannot top up credits or disable anyone."""

from __future__ import annotations

import datetime as dt

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger import Ledger
from web.domain.accounts.disabling import disable_user, enable_user
from web.domain.accounts.invites import CreatedInvite, InvitesService, InviteView
from web.domain.accounts.schemas import Identity, UserView
from web.domain.accounts.services import AccountsService
from web.domain.admin.refunds import RefundRequest, RefundResult, refund_reply
from web.domain.admin.schemas import (
    MAX_TOPUP_CREDITS,
    TOPUP_KEY_PREFIX,
    AuditResult,
    TopUpResult,
    UserWithBalance,
)
from web.domain.admin.usage import AdminUsageReport, admin_usage
from web.domain.admin.usage_keys import KeyUsageReport, admin_key_usage
from web.domain.billing.services import BillingService
from web.errors import PermissionDenied, ValidationFailed
from web.ledger_calls import counted
from web.logging import get_logger
from web.settings import AuthSettings

log = get_logger(__name__)
INTERNAL_ADMIN = Identity(user_id=0, username="cli", role="admin", account_id="", via="internal")


def check_admin(identity: Identity) -> None:
    if not identity.is_admin:
        raise PermissionDenied("this action needs the admin role")
    if not identity.is_session:
        raise PermissionDenied("admin actions need a signed-in session, not an API key")


class AdminService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ledger: Ledger,
        accounts: AccountsService,
        billing: BillingService,
        invites: InvitesService,
        auth: AuthSettings,
        checkpoint_key: Ed25519PublicKey,
    ) -> None:
        self._sessions = sessions
        self._ledger = ledger
        self._accounts = accounts
        self._billing = billing
        self._invites = invites
        self._auth = auth
        self._checkpoint_key = checkpoint_key

    async def top_up(
        self, identity: Identity, user_id: int, amount: int, *, idempotency_key: str, note: str
    ) -> TopUpResult:
        check_admin(identity)
        # bool is an int in Python; an amount is a whole number and nothing else.
        if type(amount) is not int or not 1 <= amount <= MAX_TOPUP_CREDITS:
            raise ValidationFailed(
                f"amount must be an integer 1-{MAX_TOPUP_CREDITS}", field="amount"
            )
        if not idempotency_key:
            raise ValidationFailed("an Idempotency-Key is required for top-ups")
        user = await self._accounts.get_user(user_id)
        async with counted("add_credits"):
            receipt = await self._ledger.add_credits(
                user.account_id,
                amount,
                source="admin_topup",
                note=note or "admin top-up",
                idempotency_key=TOPUP_KEY_PREFIX + idempotency_key,
            )
        log.info("credits_topped_up", by=identity.username, user_id=user_id, amount=amount)
        return TopUpResult(
            user_id=user_id,
            amount=amount,
            event_id=receipt.event_id,
            balance=await self._billing.balance_of(user.account_id),
        )

    async def refund(
        self, identity: Identity, data: RefundRequest, *, idempotency_key: str
    ) -> RefundResult:
        """Give back all or part of one reply's capture (web.domain.admin.refunds)."""
        check_admin(identity)
        if not idempotency_key:
            raise ValidationFailed("an Idempotency-Key is required for refunds")
        result = await refund_reply(
            self._sessions, self._ledger, identity, data, idempotency_key=idempotency_key
        )
        log.info(
            "reply_refunded",
            by=identity.username,
            request_id=data.request_id,
            credits=result.credits,
            replayed=result.replayed,
        )
        return result

    async def usage(
        self,
        identity: Identity,
        *,
        username: str | None = None,
        since: dt.date | None = None,
        until: dt.date | None = None,
    ) -> AdminUsageReport:
        """Usage per UTC day, user and model, with totals (web.domain.admin.usage)."""
        check_admin(identity)
        return await admin_usage(self._sessions, username=username, since=since, until=until)

    async def key_usage(
        self,
        identity: Identity,
        *,
        username: str | None = None,
        key_id: int | None = None,
        since: dt.date | None = None,
        until: dt.date | None = None,
    ) -> KeyUsageReport:
        """Usage per UTC day, API key and model, with per-key and grand totals
        (web.domain.admin.usage_keys)."""
        check_admin(identity)
        return await admin_key_usage(
            self._sessions, username=username, key_id=key_id, since=since, until=until
        )

    async def users(self, identity: Identity) -> list[UserWithBalance]:
        check_admin(identity)
        return [
            UserWithBalance(user=user, balance=await self._billing.balance_of(user.account_id))
            for user in await self._accounts.list_users()
        ]

    async def audit(self, identity: Identity) -> AuditResult:
        check_admin(identity)
        async with counted("audit"):
            # The stored checkpoints' signatures too, as `ledgerchat audit` checks them.
            report = await self._ledger.audit(public_key=self._checkpoint_key)
        return AuditResult(clean=report.clean, report=report.to_dict())

    async def disable(self, identity: Identity, user_id: int) -> UserView:
        """The user can no longer sign in; their sessions and API keys are revoked now."""
        check_admin(identity)
        if user_id == identity.user_id:
            raise ValidationFailed("an admin cannot disable their own account")
        user = await disable_user(self._sessions, user_id)
        log.warning("user_disabled_by", by=identity.username, user_id=user_id)
        return user

    async def enable(self, identity: Identity, user_id: int) -> UserView:
        """The user may sign in again; keys revoked by the disable stay revoked."""
        check_admin(identity)
        return await enable_user(self._sessions, user_id)

    async def create_invite(
        self, identity: Identity, *, expires_in_s: int | None = None, note: str = ""
    ) -> CreatedInvite:
        check_admin(identity)
        ttl_s = self._auth.invite_default_ttl_s if expires_in_s is None else expires_in_s
        return await self._invites.create(identity.user_id or None, ttl_s, note)

    async def invites(self, identity: Identity) -> list[InviteView]:
        check_admin(identity)
        return await self._invites.list()
