"""Makes the OpenAPI document tell the truth about errors: every error answer of the service
has the body `{"error": {"code", "message", "details"}}` (web.exception_handlers), so each
operation documents that shape for the statuses it can return, replacing Litestar's default
400 schema (which describes Litestar's own error body, not ours)."""

from __future__ import annotations

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
    "413": "Request body larger than LEDGERCHAT_MAX_REQUEST_BODY_BYTES",
    "503": "Shutting down or the ledger is busy; see Retry-After",
}
AUTHENTICATED_ERRORS = {
    "401": "Missing, malformed, expired or revoked credentials",
    "403": "Needs the admin role, a signed-in session (not an API key), or a key scope; "
    "or the account is disabled",
    "404": "No such resource for this user",
    "409": "Conflict (already exists, request still running)",
}
CHAT_ERRORS = {
    "402": "The worst-case cost is not covered by the available credits",
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
        "403": "The account is disabled",
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
