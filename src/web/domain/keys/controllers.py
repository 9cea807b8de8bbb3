"""HTTP handlers of API keys: /api/keys (a signed-in session only, never a key)."""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from web.auth import IDENTITY_DEPENDENCY, SECURITY, requires_session
from web.domain.accounts.schemas import Identity
from web.domain.budgets.deps import BUDGETS_DEPENDENCIES
from web.domain.budgets.schemas import BudgetsView, UpdateKeyRequest
from web.domain.budgets.services import BudgetsService
from web.domain.keys.deps import KEYS_DEPENDENCIES
from web.domain.keys.schemas import ApiKeyView, CreatedApiKey, CreateKeyRequest
from web.domain.keys.services import ApiKeysService, check_signed_in
from web.params import RowId

DEPENDENCIES = {**IDENTITY_DEPENDENCY, **KEYS_DEPENDENCIES, **BUDGETS_DEPENDENCIES}


class ApiKeysController(Controller):
    path = "/api/keys"
    tags = ("api keys",)
    dependencies = DEPENDENCIES
    guards = (requires_session,)
    security = SECURITY

    @post("/", status_code=HTTP_201_CREATED)
    async def create(
        self,
        identity: NamedDependency[Identity],
        api_keys: NamedDependency[ApiKeysService],
        budgets: NamedDependency[BudgetsService],
        data: JSONBody[CreateKeyRequest],
    ) -> CreatedApiKey:
        """Create an API key for /v1; the secret is shown only in this answer. Its scopes
        default to LEDGERCHAT_AUTH_API_KEY_DEFAULT_SCOPES (`chat read`)."""
        created = await api_keys.create(identity, data.name, data.scopes)
        if data.budget is not None:
            await budgets.set_key_budget(identity, created.key.id, data.budget)
        return created

    @patch("/{key_id:int}", status_code=HTTP_200_OK)
    async def update(
        self,
        identity: NamedDependency[Identity],
        api_keys: NamedDependency[ApiKeysService],
        budgets: NamedDependency[BudgetsService],
        key_id: RowId,
        data: JSONBody[UpdateKeyRequest],
    ) -> BudgetsView:
        """Set (or, with `"budget": null`, clear) the key's spending limits; answers your
        budgets with what each used. Spending before a limit was set counts against it."""
        check_signed_in(identity)
        await budgets.set_key_budget(identity, key_id, data.budget)
        return await budgets.views(identity, with_keys=True)

    @get("/")
    async def list_keys(
        self, identity: NamedDependency[Identity], api_keys: NamedDependency[ApiKeysService]
    ) -> list[ApiKeyView]:
        return await api_keys.list(identity)

    @delete("/{key_id:int}", status_code=HTTP_200_OK)
    async def revoke(
        self,
        identity: NamedDependency[Identity],
        api_keys: NamedDependency[ApiKeysService],
        key_id: RowId,
    ) -> ApiKeyView:
        """Revoke a key; it stops working at once."""
        return await api_keys.revoke(identity, key_id)
