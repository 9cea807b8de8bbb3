"""HTTP handlers of budgets: a user's own cap and view (/api/me/budgets, /api/me/cap, a
signed-in session), an admin's cap for a user (/api/admin/users/{id}/cap). Key budgets are
set through /api/keys (create and PATCH)."""

from __future__ import annotations

from litestar import Controller, delete, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from web.auth import IDENTITY_DEPENDENCY, SECURITY, requires_admin, requires_session
from web.domain.accounts.schemas import Identity
from web.domain.budgets.deps import BUDGETS_DEPENDENCIES
from web.domain.budgets.schemas import BudgetsView, CapRequest
from web.domain.budgets.services import BudgetsService
from web.params import RowId

DEPENDENCIES = {**IDENTITY_DEPENDENCY, **BUDGETS_DEPENDENCIES}


class MyBudgetsController(Controller):
    path = "/api/me"
    tags = ("budgets",)
    dependencies = DEPENDENCIES
    guards = (requires_session,)
    security = SECURITY

    @get("/budgets")
    async def my_budgets(
        self, identity: NamedDependency[Identity], budgets: NamedDependency[BudgetsService]
    ) -> BudgetsView:
        """Your caps and your API keys' limits, each with what it used in its current period
        (UTC calendar days, weeks from Monday, months) and when it resets."""
        return await budgets.views(identity, with_keys=True)

    @put("/cap", status_code=HTTP_200_OK)
    async def set_my_cap(
        self,
        identity: NamedDependency[Identity],
        budgets: NamedDependency[BudgetsService],
        data: JSONBody[CapRequest],
    ) -> BudgetsView:
        """Cap your own spending per day, week or month (below your balance); chats past it
        answer 402 `budget_exceeded` until the period resets."""
        return await budgets.set_own_cap(identity, data)

    @delete("/cap", status_code=HTTP_200_OK)
    async def clear_my_cap(
        self, identity: NamedDependency[Identity], budgets: NamedDependency[BudgetsService]
    ) -> BudgetsView:
        return await budgets.set_own_cap(identity, None)


class AdminCapsController(Controller):
    path = "/api/admin/users"
    tags = ("admin",)
    dependencies = DEPENDENCIES
    guards = (requires_admin,)
    security = SECURITY

    @put("/{user_id:int}/cap", status_code=HTTP_200_OK)
    async def set_user_cap(
        self,
        identity: NamedDependency[Identity],
        budgets: NamedDependency[BudgetsService],
        user_id: RowId,
        data: JSONBody[CapRequest],
    ) -> BudgetsView:
        """Cap a user's spending per period; with the user's own cap, the lower one binds."""
        return await budgets.set_admin_cap(identity, user_id, data)

    @delete("/{user_id:int}/cap", status_code=HTTP_200_OK)
    async def clear_user_cap(
        self,
        identity: NamedDependency[Identity],
        budgets: NamedDependency[BudgetsService],
        user_id: RowId,
    ) -> BudgetsView:
        return await budgets.set_admin_cap(identity, user_id, None)
