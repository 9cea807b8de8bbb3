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
AUTHENTICATED_ERRORS = {
    "401": "Missing, malformed, expired or revoked credentials",
    "403": "Needs the admin role",
    "404": "No such resource for this user",
    "409": "Conflict (already exists, request still running)",
}
CHAT_ERRORS = {
    "402": "The worst-case cost is not covered by the available credits",
    "503": "Shutting down, model unavailable or engine busy; see Retry-After",
}
CHAT_PATHS = ("/api/chat", "/v1/chat/completions")
PUBLIC_PATHS = ("/health", "/ready", "/api/auth/register", "/api/auth/login", "/api/auth/refresh")


def _error_response(description: str) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description,
        content={
            "application/json": OpenAPIMediaType(
                schema=Reference(ref=f"#/components/schemas/{ERROR_SCHEMA_NAME}")
            )
        },
    )


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
            errors = dict(COMMON_ERRORS)
            if path not in PUBLIC_PATHS:
                errors.update(AUTHENTICATED_ERRORS)
            if path in CHAT_PATHS:
                errors.update(CHAT_ERRORS)
            if path == "/ready":
                errors = {"503": "Not ready: see checks"}
            responses = dict(operation.responses or {})
            for status, description in errors.items():
                if path == "/ready":
                    continue
                responses[status] = _error_response(description)
            operation.responses = responses
