"""HTTP handlers of API keys: /api/keys."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from web.auth import IDENTITY_DEPENDENCY, SECURITY
from web.domain.accounts.schemas import Identity
from web.domain.keys.schemas import ApiKeyView, CreatedApiKey, CreateKeyRequest
from web.params import RowId
from web.services import Services


class ApiKeysController(Controller):
    path = "/api/keys"
    tags = ("api keys",)
    dependencies = IDENTITY_DEPENDENCY
    security = SECURITY

    @post("/", status_code=HTTP_201_CREATED)
    async def create(
        self,
        identity: NamedDependency[Identity],
        services: NamedDependency[Services],
        data: JSONBody[CreateKeyRequest],
    ) -> CreatedApiKey:
        """Create an API key for /v1; the secret is shown only in this answer."""
        return await services.api_keys.create(identity, data.name)

    @get("/")
    async def list_keys(
        self, identity: NamedDependency[Identity], services: NamedDependency[Services]
    ) -> list[ApiKeyView]:
        return await services.api_keys.list(identity)

    @delete("/{key_id:int}", status_code=HTTP_200_OK)
    async def revoke(
        self,
        identity: NamedDependency[Identity],
        services: NamedDependency[Services],
        key_id: RowId,
    ) -> ApiKeyView:
        """Revoke a key; it stops working at once."""
        return await services.api_keys.revoke(identity, key_id)
