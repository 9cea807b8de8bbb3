"""Authentication: a middleware turns the Authorization header (a JWT access token or an API
key, both as `Bearer`) into an `Identity` before the handler runs, applying the per-user rate
limit; dependencies hand the identity (or the admin) to handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.middleware import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
    DefineMiddleware,
)
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme

from web.domain.accounts.schemas import Identity
from web.domain.accounts.tokens import API_KEY_PREFIX
from web.errors import NotAuthenticated, PermissionDenied, RateLimited
from web.middleware import client_address
from web.services import Services

MAX_AUTHORIZATION_CHARS = 4096
PUBLIC = "public"
"""Handler `opt` key of the /api endpoints that need no credentials."""
SECURITY: list[SecurityRequirement] = [{"BearerAuth": []}]
SECURITY_COMPONENTS = Components(
    security_schemes={
        "BearerAuth": SecurityScheme(
            type="http",
            scheme="bearer",
            bearer_format="JWT access token or API key",
            description="`Authorization: Bearer <access token from /api/auth/login or API key>`",
        )
    }
)


def provide_services(state: State) -> Services:
    services: Services = state.services
    return services


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = connection.headers.get("authorization")
    if not header:
        raise NotAuthenticated("missing Authorization header")
    if len(header) > MAX_AUTHORIZATION_CHARS:
        raise NotAuthenticated("Authorization header is too long")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated("Authorization must be 'Bearer <token>'")
    return token.strip()


class BearerAuthMiddleware(AbstractAuthenticationMiddleware):
    """Authenticates /api and /v1 before any parameter or body is parsed, so a request
    without valid credentials always gets 401 (never a validation error first). Handlers marked
    `opt={PUBLIC: True}` (register, login, refresh) are skipped."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        services: Services = connection.app.state.services
        token = bearer_token(connection)
        if token.startswith(API_KEY_PREFIX):
            identity = await services.api_keys.authenticate(token)
        else:
            identity = await services.accounts.identity_from_access_token(token)
        retry_after = services.user_limiter.hit(f"user:{identity.user_id}")
        if retry_after:
            raise RateLimited("too many requests for this user", retry_after_s=retry_after)
        return AuthenticationResult(user=identity, auth=token)


# Applied by the router of /api and /v1 only, so probes, /schema and the UI are untouched.
AUTH_MIDDLEWARE = DefineMiddleware(BearerAuthMiddleware, exclude_from_auth_key=PUBLIC)


def provide_identity(request: Request[Any, Any, Any]) -> Identity:
    identity = request.scope.get("user")
    if not isinstance(identity, Identity):
        raise NotAuthenticated("this endpoint needs credentials")
    return identity


async def provide_admin(identity: NamedDependency[Identity]) -> Identity:
    if not identity.is_admin:
        raise PermissionDenied("this endpoint needs the admin role")
    return identity


def client_of(request: Request[Any, Any, Any]) -> str:
    return client_address(request.scope)


SERVICES_DEPENDENCY: dict[str, Provide | Callable[..., Any]] = {
    "services": Provide(provide_services, sync_to_thread=False)
}
IDENTITY_DEPENDENCY = {"identity": Provide(provide_identity, sync_to_thread=False)}
ADMIN_DEPENDENCY = {
    "identity": Provide(provide_identity, sync_to_thread=False),
    "admin": Provide(provide_admin),
}
