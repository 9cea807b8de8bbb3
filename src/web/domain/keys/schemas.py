"""Wire types of API keys. The secret is shown once, in the create answer."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec


class CreateKeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "default"


class ApiKeyView(msgspec.Struct):
    id: int
    name: str
    prefix: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class CreatedApiKey(msgspec.Struct):
    key: ApiKeyView
    secret: str
