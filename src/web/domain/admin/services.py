"""Admin actions; every method checks the caller is an admin (the CLI passes an internal
admin identity), so the rule holds for the API, the UI and the CLI alike."""

from __future__ import annotations

from ledger import Ledger
from web.domain.accounts.schemas import Identity
from web.domain.accounts.services import AccountsService
from web.domain.admin.schemas import (
    MAX_TOPUP_CREDITS,
    TOPUP_KEY_PREFIX,
    AuditResult,
    TopUpResult,
    UserWithBalance,
)
from web.domain.billing.services import BillingService
from web.errors import PermissionDenied, ValidationFailed
from web.ledger_calls import counted
from web.logging import get_logger

log = get_logger(__name__)
INTERNAL_ADMIN = Identity(user_id=0, username="cli", role="admin", account_id="", via="internal")


def check_admin(identity: Identity) -> None:
    if not identity.is_admin:
        raise PermissionDenied("this action needs the admin role")


class AdminService:
    def __init__(self, ledger: Ledger, accounts: AccountsService, billing: BillingService) -> None:
        self._ledger = ledger
        self._accounts = accounts
        self._billing = billing

    async def top_up(
        self, identity: Identity, user_id: int, amount: int, *, idempotency_key: str, note: str
    ) -> TopUpResult:
        check_admin(identity)
        if not 1 <= amount <= MAX_TOPUP_CREDITS:
            raise ValidationFailed(f"amount must be 1-{MAX_TOPUP_CREDITS}", field="amount")
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

    async def users(self, identity: Identity) -> list[UserWithBalance]:
        check_admin(identity)
        return [
            UserWithBalance(user=user, balance=await self._billing.balance_of(user.account_id))
            for user in await self._accounts.list_users()
        ]

    async def audit(self, identity: Identity) -> AuditResult:
        check_admin(identity)
        async with counted("audit"):
            report = await self._ledger.audit()
        return AuditResult(clean=report.clean, report=report.to_dict())
