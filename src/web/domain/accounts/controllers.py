"""HTTP handlers of accounts: /api/auth/* and /api/me."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from web.auth import IDENTITY_DEPENDENCY, PUBLIC, SECURITY, client_of
from web.domain.accounts.schemas import (
    Identity,
    LoginRequest,
    RefreshRequest,
    RegisterRequest,
    TokenPair,
    UserView,
)
from web.services import Services


class LogoutRequest(msgspec.Struct, forbid_unknown_fields=True):
    # The same bounds as RefreshRequest: an empty or oversized token is a malformed body.
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class AuthController(Controller):
    path = "/api/auth"
    tags = ("auth",)

    @post("/register", status_code=HTTP_201_CREATED, opt={PUBLIC: True})
    async def register(
        self, data: JSONBody[RegisterRequest], services: NamedDependency[Services]
    ) -> UserView:
        """Create an account; it starts with the signup grant."""
        return await services.accounts.register(data.username, data.email, data.password)

    @post("/login", status_code=HTTP_200_OK, opt={PUBLIC: True})
    async def login(
        self,
        data: JSONBody[LoginRequest],
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
    ) -> TokenPair:
        """Exchange username (or email) and password for an access and a refresh token."""
        return await services.accounts.login(data.username, data.password, client_of(request))

    @post("/refresh", status_code=HTTP_200_OK, opt={PUBLIC: True})
    async def refresh(
        self, data: JSONBody[RefreshRequest], services: NamedDependency[Services]
    ) -> TokenPair:
        """Rotate a refresh token; reusing a rotated one revokes the whole session."""
        return await services.accounts.refresh(data.refresh_token)

    @post(
        "/logout",
        status_code=HTTP_204_NO_CONTENT,
        dependencies=IDENTITY_DEPENDENCY,
        security=SECURITY,
    )
    async def logout(
        self,
        identity: NamedDependency[Identity],
        services: NamedDependency[Services],
        data: JSONBody[LogoutRequest | None] = None,
    ) -> None:
        """Revoke the given session, or every session of the caller when none is given."""
        await services.accounts.logout(identity, data.refresh_token if data else None)


class MeController(Controller):
    path = "/api/me"
    tags = ("auth",)
    dependencies = IDENTITY_DEPENDENCY
    security = SECURITY

    @get("/")
    async def me(
        self, identity: NamedDependency[Identity], services: NamedDependency[Services]
    ) -> UserView:
        """The calling user."""
        return await services.accounts.get_user(identity.user_id)
