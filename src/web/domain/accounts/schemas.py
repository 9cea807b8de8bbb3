"""Wire types of accounts: request bodies validated by msgspec, views returned by services."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from web.settings import MAX_PASSWORD_CHARS

Role = Literal["user", "admin"]


class RegisterRequest(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=3, max_length=50)]
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PASSWORD_CHARS)]
    invite_code: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    """Needed when registration is by invite (LEDGERCHAT_AUTH_REGISTRATION_MODE=invite)."""


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=320)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PASSWORD_CHARS)]


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class UserView(msgspec.Struct):
    id: int
    username: str
    email: str
    role: Role
    account_id: str
    created_at: dt.datetime
    disabled: bool = False


class TokenPair(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


class Identity(msgspec.Struct, frozen=True):
    """Who is calling: resolved once per request from a JWT or an API key."""

    user_id: int
    username: str
    role: Role
    account_id: str
    via: Literal["access_token", "api_key", "internal"]
    scopes: tuple[str, ...] = ()
    """What an API key may do (`chat`, `read`, `write`); a signed-in session may do all."""
    api_key_id: int | None = None
    """The key a request came with (its budgets apply); None for a session."""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_session(self) -> bool:
        """Signed in with a password (or the CLI acting for an operator), not an API key."""
        return self.via != "api_key"

    def may(self, scope: str) -> bool:
        return self.is_session or scope in self.scopes
