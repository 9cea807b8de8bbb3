"""Makes the OpenAPI document tell the truth about the server.

Errors: every error answer has the body `{"error": {"code", "message", "details"}}`
(web.exception_handlers), so each operation documents that shape for the statuses it can
return, replacing Litestar's default 400 schema (which describes Litestar's own error body).

Request bodies: Litestar's schemas of msgspec Structs drop what the decoder enforces (unknown
fields refused, a `0` minimum, the limits inside a nullable union or a list's items), so each
request body's schema is replaced by msgspec's own JSON schema of the same type, which is what
decodes the body. Other media types: /api/chat answers `text/event-stream`,
/v1/chat/completions JSON or `text/event-stream` by its `stream` field, /api/transactions JSON
or `text/csv` by its `format`.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    RequestBody,
    Schema,
)
from litestar.openapi.spec.enums import OpenAPIType
from litestar.routes import HTTPRoute

from web.domain.openai.schemas import ChatCompletion

ERROR_SCHEMA_NAME = "Error"
ERROR_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["error"],
    properties={
        "error": Schema(
            type=OpenAPIType.OBJECT,
            required=["code", "message", "details"],
            properties={
                "code": Schema(type=OpenAPIType.STRING, description="machine-readable error name"),
                "message": Schema(type=OpenAPIType.STRING),
                "details": Schema(type=OpenAPIType.OBJECT),
            },
        )
    },
)
COMMON_ERRORS = {
    "400": "Malformed request (body, parameters)",
    "422": "A business rule refused the request",
    "429": "Rate limited or login locked; see Retry-After",
}
BODY_ERRORS = {
    "403": "A browser request from another site (Origin) is refused",
    "413": "Request body larger than LEDGERCHAT_MAX_REQUEST_BODY_BYTES",
    "415": "The request body is not application/json",
    "503": "Shutting down, or the ledger or database is busy; see Retry-After",
}
AUTHENTICATED_ERRORS = {
    "401": "Missing, malformed, expired or revoked credentials",
    "403": "Needs the admin role, a signed-in session (not an API key), or a key scope; "
    "or the account is disabled",
    "404": "No such resource for this user",
    "409": "Conflict (already exists, request still running)",
}
CHAT_ERRORS = {
    "402": "The worst-case cost is not covered by the available credits "
    "(insufficient_credits) or would pass a budget (budget_exceeded: which limit, what is "
    "left, when it resets)",
    "503": "Shutting down, model unavailable, engine or ledger busy; see Retry-After",
}
# Public operations answer a few statuses of their own.
PUBLIC_ERRORS = {
    "/api/auth/register": {
        "403": "Registration is closed, or the invite code is missing, used or expired",
        "409": "The username or email is taken",
    },
    "/api/auth/login": {
        "401": "Wrong username or password",
        "403": "A browser request from another site (Origin) is refused, or the account is"
        " disabled",
    },
    "/api/auth/refresh": {"401": "Unknown, expired, revoked or reused refresh token"},
}
CHAT_PATHS = ("/api/chat", "/v1/chat/completions")
PROBE_PATHS = ("/health", "/ready", "/metrics")
# Operations whose body may be left out entirely.
OPTIONAL_BODIES = {("/api/auth/logout", "post")}


def _error_response(description: str) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description,
        content={
            "application/json": OpenAPIMediaType(
                schema=Reference(ref=f"#/components/schemas/{ERROR_SCHEMA_NAME}")
            )
        },
    )


def _errors_of(path: str, method: str) -> dict[str, str]:
    """The error statuses one operation can answer, with what each means there."""
    if path in PROBE_PATHS:
        return {}
    errors = dict(COMMON_ERRORS)
    if method in ("post", "put", "patch"):
        errors.update(BODY_ERRORS)
    if path in PUBLIC_ERRORS:
        errors.update(PUBLIC_ERRORS[path])
    else:
        errors.update(AUTHENTICATED_ERRORS)
    if path in CHAT_PATHS:
        errors.update(CHAT_ERRORS)
    return errors


def document_errors(document: OpenAPI) -> None:
    """Add the Error schema and the error statuses of every operation, in place."""
    components = document.components or Components()
    if isinstance(components, list):  # Litestar allows a list; ours is a single object
        components = components[0]
    components.schemas = {**(components.schemas or {}), ERROR_SCHEMA_NAME: ERROR_SCHEMA}
    document.components = components
    for path, item in (document.paths or {}).items():
        for method in ("get", "post", "put", "patch", "delete"):
            operation: Operation | None = getattr(item, method, None)
            if operation is None:
                continue
            # Litestar adds its own 400 (its error body, not ours) to every operation.
            responses = {
                status: response
                for status, response in (operation.responses or {}).items()
                if not status.startswith(("4", "5"))
            }
            for status, description in _errors_of(path, method).items():
                responses[status] = _error_response(description)
            ready = responses.get("200")
            if path == "/ready" and isinstance(ready, OpenAPIResponse):
                # Not ready is the same body as ready, with ready=false and the failing checks.
                responses["503"] = OpenAPIResponse("Not ready: see checks", content=ready.content)
            operation.responses = responses
            body = operation.request_body
            if (path, method) in OPTIONAL_BODIES and isinstance(body, RequestBody):
                body.required = False


# Schema validators check each event's data against this; the event shapes are in docs/api.md.
SSE_CONTENT = {
    "text/event-stream": OpenAPIMediaType(
        schema=Schema(description="server-sent events; each event's data is JSON")
    )
}
SCHEMA_REF = "#/components/schemas/{name}"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _to_spec(value: Any) -> Any:
    """msgspec's JSON-schema dicts as Litestar's OpenAPI spec objects."""
    if isinstance(value, list):
        return [_to_spec(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "$ref" in value:
        return Reference(ref=value["$ref"])
    fields: dict[str, Any] = {}
    for key, item in value.items():
        name = _snake(key)
        if name == "type":
            fields[name] = OpenAPIType(item)
        elif name == "properties":
            fields[name] = {prop: _to_spec(schema) for prop, schema in item.items()}
        elif name in ("items", "additional_properties", "any_of", "one_of", "all_of"):
            fields[name] = _to_spec(item)
        else:
            fields[name] = item
    return Schema(**fields)


def _structs_in(annotation: Any) -> Iterable[type[msgspec.Struct]]:
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        yield annotation
    elif isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for argument in typing.get_args(annotation):
            yield from _structs_in(argument)


def request_body_types(app: Litestar) -> list[type[msgspec.Struct]]:
    """The Struct types request bodies are decoded into, from every route handler's `data`."""
    found: dict[str, type[msgspec.Struct]] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            data = handler.parsed_fn_signature.parameters.get("data")
            if data is not None:
                for struct in _structs_in(data.annotation):
                    found[struct.__name__] = struct
    return list(found.values())


def match_server_schemas(app: Litestar) -> None:
    """Replace request-body component schemas with msgspec's and declare the streams."""
    document = app.openapi_schema
    _, components = msgspec.json.schema_components(
        [*request_body_types(app), ChatCompletion], ref_template=SCHEMA_REF
    )
    spec = document.components
    if isinstance(spec, list):
        spec = spec[0]
    assert spec is not None  # document_errors has set it
    spec.schemas = {**(spec.schemas or {}), **{k: _to_spec(v) for k, v in components.items()}}
    paths = document.paths or {}
    chat = paths.get("/api/chat")
    if chat is not None and chat.post is not None and chat.post.responses:
        chat.post.responses["200"] = OpenAPIResponse(
            description="The reply as server-sent events", content=SSE_CONTENT
        )
    transactions = paths.get("/api/transactions")
    if transactions is not None and transactions.get is not None and transactions.get.responses:
        page = transactions.get.responses.get("200")
        if isinstance(page, OpenAPIResponse):
            page.content = {
                **(page.content or {}),
                "text/csv": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, description="with format=csv")
                ),
            }
    completions = paths.get("/v1/chat/completions")
    if completions is not None and completions.post is not None and completions.post.responses:
        completions.post.responses["200"] = OpenAPIResponse(
            description="A chat completion (JSON), or server-sent chunks when `stream` is true",
            content={
                "application/json": OpenAPIMediaType(
                    schema=Reference(ref=SCHEMA_REF.format(name="ChatCompletion"))
                ),
                **SSE_CONTENT,
            },
        )
