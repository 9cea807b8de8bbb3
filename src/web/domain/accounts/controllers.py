"""HTTP handlers of accounts: /api/auth/* and /api/me."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from web.auth import IDENTITY_DEPENDENCY, PUBLIC, SECURITY, client_of, requires_session
from web.domain.accounts.deps import ACCOUNTS_DEPENDENCIES
from web.domain.accounts.registration import RegistrationService
from web.domain.accounts.schemas import (
    Identity,
    LoginRequest,
    RefreshRequest,
    RegisterRequest,
    TokenPair,
    UserView,
)
from web.domain.accounts.services import AccountsService

ME_DEPENDENCIES = {**IDENTITY_DEPENDENCY, **ACCOUNTS_DEPENDENCIES}


class LogoutRequest(msgspec.Struct, forbid_unknown_fields=True):
    # The same bounds as RefreshRequest: an empty or oversized token is a malformed body.
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class AuthController(Controller):
    path = "/api/auth"
    tags = ("auth",)
    dependencies = ACCOUNTS_DEPENDENCIES

    @post("/register", status_code=HTTP_201_CREATED, opt={PUBLIC: True})
    async def register(
        self,
        data: JSONBody[RegisterRequest],
        registration: NamedDependency[RegistrationService],
        request: Request[Any, Any, Any],
    ) -> UserView:
        """Create an account (when LEDGERCHAT_AUTH_REGISTRATION_MODE allows); it starts with
        the signup grant."""
        return await registration.sign_up(
            data.username,
            data.email,
            data.password,
            invite_code=data.invite_code,
            client_address=client_of(request),
        )

    @post("/login", status_code=HTTP_200_OK, opt={PUBLIC: True})
    async def login(
        self,
        data: JSONBody[LoginRequest],
        accounts: NamedDependency[AccountsService],
        request: Request[Any, Any, Any],
    ) -> TokenPair:
        """Exchange username (or email) and password for an access and a refresh token."""
        return await accounts.login(data.username, data.password, client_of(request))

    @post("/refresh", status_code=HTTP_200_OK, opt={PUBLIC: True})
    async def refresh(
        self, data: JSONBody[RefreshRequest], accounts: NamedDependency[AccountsService]
    ) -> TokenPair:
        """Rotate a refresh token; reusing a rotated one revokes the whole session."""
        return await accounts.refresh(data.refresh_token)

    @post(
        "/logout",
        status_code=HTTP_204_NO_CONTENT,
        dependencies=IDENTITY_DEPENDENCY,
        guards=[requires_session],
        security=SECURITY,
    )
    async def logout(
        self,
        identity: NamedDependency[Identity],
        accounts: NamedDependency[AccountsService],
        data: JSONBody[LogoutRequest | None] = None,
    ) -> None:
        """Revoke the given session, or every session of the caller when none is given.
        Needs a signed-in session: an API key cannot sign its owner out."""
        await accounts.logout(identity, data.refresh_token if data else None)


class MeController(Controller):
    path = "/api/me"
    tags = ("auth",)
    dependencies = ME_DEPENDENCIES
    security = SECURITY

    @get("/")
    async def me(
        self, identity: NamedDependency[Identity], accounts: NamedDependency[AccountsService]
    ) -> UserView:
        """The calling user."""
        return await accounts.get_user(identity.user_id)
