"""HTTP handlers of admin actions: /api/admin/*."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody
from litestar.status_codes import HTTP_200_OK

from web.auth import ADMIN_DEPENDENCY, SECURITY
from web.domain.accounts.schemas import Identity
from web.domain.admin.schemas import (
    MAX_TOPUP_KEY_CHARS,
    AuditResult,
    TopUpRequest,
    TopUpResult,
    UserWithBalance,
)
from web.params import RowId
from web.services import Services


class AdminController(Controller):
    path = "/api/admin"
    tags = ("admin",)
    dependencies = ADMIN_DEPENDENCY
    security = SECURITY

    @post("/users/{user_id:int}/credits", status_code=HTTP_200_OK)
    async def top_up(
        self,
        admin: NamedDependency[Identity],
        services: NamedDependency[Services],
        user_id: RowId,
        data: JSONBody[TopUpRequest],
        idempotency_key: Annotated[
            str,
            HeaderParameter(name="Idempotency-Key", min_length=1, max_length=MAX_TOPUP_KEY_CHARS),
        ],
    ) -> TopUpResult:
        """Add credits to a user; a retry with the same Idempotency-Key adds them once."""
        return await services.admin.top_up(
            admin, user_id, data.amount, idempotency_key=idempotency_key, note=data.note
        )

    @get("/users")
    async def users(
        self, admin: NamedDependency[Identity], services: NamedDependency[Services]
    ) -> list[UserWithBalance]:
        """Every user with their balance."""
        return await services.admin.users(admin)

    @get("/audit")
    async def audit(
        self, admin: NamedDependency[Identity], services: NamedDependency[Services]
    ) -> AuditResult:
        """The ledger audit (replays every account's log) as JSON."""
        return await services.admin.audit(admin)
