"""Authentication and the access rules as Litestar guards.

A middleware turns the Authorization header (a JWT access token or an API key, both as
`Bearer`) into an `Identity` before the handler runs, applying the per-user rate limit. Guards
then decide what that identity may reach: `requires_session` (key management, logout: an API
key is refused), `requires_admin` (a signed-in admin), and `key_scopes`, applied to every API
route, which lets an API key through only where its scopes allow (`read` for GET routes,
`chat` for starting chats, `write` for other changes).
"""

from __future__ import annotations

from typing import Any, Protocol

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
    DefineMiddleware,
)
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme

from web.domain.accounts.schemas import Identity
from web.domain.accounts.services import AccountsService
from web.domain.accounts.tokens import API_KEY_PREFIX
from web.domain.keys.services import ApiKeysService
from web.errors import NotAuthenticated, PermissionDenied, RateLimited
from web.middleware import client_address
from web.rate_limit import RateLimiter

MAX_AUTHORIZATION_CHARS = 4096
PUBLIC = "public"
"""Handler `opt` key of the /api endpoints that need no credentials."""
SCOPE = "api_key_scope"
"""Handler `opt` key naming the scope an API key needs there (else derived, see key_scopes)."""
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


class Credentials(Protocol):
    """What the middleware needs of the composition root (kept in app state)."""

    @property
    def accounts(self) -> AccountsService: ...

    @property
    def api_keys(self) -> ApiKeysService: ...

    @property
    def user_limiter(self) -> RateLimiter: ...


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
        services: Credentials = connection.app.state.services
        token = bearer_token(connection)
        if token.startswith(API_KEY_PREFIX):
            identity = await services.api_keys.authenticate(token)
        else:
            identity = await services.accounts.identity_from_access_token(token)
        retry_after = await services.user_limiter.hit(f"user:{identity.user_id}")
        if retry_after:
            raise RateLimited("too many requests for this user", retry_after_s=retry_after)
        return AuthenticationResult(user=identity, auth=token)


# Applied by the router of /api and /v1 only, so probes, /schema and the UI are untouched.
AUTH_MIDDLEWARE = DefineMiddleware(BearerAuthMiddleware, exclude_from_auth_key=PUBLIC)


def _identity(connection: ASGIConnection[Any, Any, Any, Any]) -> Identity:
    identity = connection.scope.get("user")
    if not isinstance(identity, Identity):
        raise NotAuthenticated("this endpoint needs credentials")
    return identity


def provide_identity(request: Request[Any, Any, Any]) -> Identity:
    return _identity(request)


# -- guards ------------------------------------------------------------------------------
def requires_session(
    connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
) -> None:
    """Signed in with a password: a leaked API key must not mint keys that outlive its own
    revocation, sign its owner out everywhere, or act as an admin. A preflight `OPTIONS` is
    not authenticated (Litestar skips auth for it) and only lists the methods: it passes."""
    if connection.scope.get("method") == "OPTIONS":
        return
    if not _identity(connection).is_session:
        raise PermissionDenied("this endpoint needs a signed-in session, not an API key")


def requires_admin(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    requires_session(connection, handler)
    if connection.scope.get("method") != "OPTIONS" and not _identity(connection).is_admin:
        raise PermissionDenied("this endpoint needs the admin role")


def scope_needed(method: str, handler: BaseRouteHandler) -> str:
    """The scope a route names in its opt (the chat routes name `chat`), else `read` for GET
    and HEAD and `write` for the rest. Named on the handler, not matched on the URL, so a
    trailing slash or a root path cannot change it."""
    named = handler.opt.get(SCOPE)
    if isinstance(named, str):
        return named
    return "read" if method in ("GET", "HEAD") else "write"


def key_scopes(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """An API key reaches only the routes its scopes allow; sessions pass (public routes
    have no identity and pass too)."""
    identity = connection.scope.get("user")
    if not isinstance(identity, Identity) or identity.is_session:
        return
    method = str(connection.scope.get("method", "GET"))
    scope = scope_needed(method, handler)
    if not identity.may(scope):
        raise PermissionDenied(f"this API key lacks the '{scope}' scope", scope=scope)


def client_of(request: Request[Any, Any, Any]) -> str:
    return client_address(request.scope)


IDENTITY_DEPENDENCY = {"identity": Provide(provide_identity, sync_to_thread=False)}
