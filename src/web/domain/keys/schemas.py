"""Wire types of API keys. The secret is shown once, in the create answer."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from web.domain.budgets.schemas import KeyBudget

Scope = Literal["chat", "read", "write"]


class CreateKeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "default"
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=3)] | None = None
    """`chat` (start chats), `read` (GET routes), `write` (other changes such as renaming a
    conversation); none given means LEDGERCHAT_AUTH_API_KEY_DEFAULT_SCOPES. Key management,
    logout and admin routes take no key at all: they need a signed-in session."""
    budget: KeyBudget | None = None
    """Spending limits of the key (a per-period and a lifetime limit), enforced by the ledger
    with each chat's hold; none: the key spends up to its user's balance and caps."""


class ApiKeyView(msgspec.Struct):
    id: int
    name: str
    prefix: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    scopes: list[str] = msgspec.field(default_factory=list)


class CreatedApiKey(msgspec.Struct):
    key: ApiKeyView
    secret: str
