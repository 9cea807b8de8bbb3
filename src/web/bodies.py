"""Strict decoding of request bodies that carry money. Litestar converts a JSON body with
msgspec's lax rules, under which `"10"` and `10.0` are accepted as the integer 10; for amounts
of credits that guessing is a bug, so such handlers decode the body again with
`strict=True` and refuse anything but a JSON integer."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request

from web.errors import ValidationFailed

T = TypeVar("T")


async def strict_json(request: Request[Any, Any, Any], kind: type[T]) -> T:
    """The body as `kind`, decoded with no type coercion (Litestar has read and cached the
    body already, so this costs no second read)."""
    try:
        return msgspec.json.decode(await request.body(), type=kind, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(f"invalid request body: {exc}") from exc
