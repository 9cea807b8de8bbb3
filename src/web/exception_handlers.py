"""The one place where errors become HTTP answers, each a JSON body
`{"error": {"code", "message", "details"}}`. Domain code never raises HTTP errors."""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap
from sqlalchemy.exc import DBAPIError, OperationalError

from inference.errors import (
    EngineBusy,
    InferenceError,
    InvalidRequest,
    ModelLoadFailed,
    ModelUnavailable,
    OutOfMemory,
    PromptTooLong,
    UpstreamError,
)
from ledger.errors import (
    AccountNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidArgument,
    LedgerBusy,
    LedgerClosed,
    LedgerError,
    StorageError,
    TooManyActiveHolds,
)
from web import errors
from web.logging import get_logger

log = get_logger(__name__)

SERVICE_STATUS: dict[type[errors.ServiceError], int] = {
    errors.ValidationFailed: 422,
    errors.NotAuthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.AlreadyExists: 409,
    errors.LoginLocked: 429,
    errors.RateLimited: 429,
    errors.IdempotencyKeyReused: 422,
    errors.RequestInProgress: 409,
    errors.CreditsExhausted: 402,
    errors.BudgetExhausted: 402,
    errors.ShuttingDown: 503,
    errors.ModelLoading: 503,
    errors.LimitsUnavailable: 503,
}
LEDGER_STATUS: dict[type[LedgerError], int] = {
    InvalidArgument: 422,
    InvalidAmount: 422,
    AccountNotFound: 404,
    InsufficientCredits: 402,
    IdempotencyConflict: 422,
    LedgerBusy: 503,
    LedgerClosed: 503,
    StorageError: 503,
    TooManyActiveHolds: 429,
}
# Ledger codes that have a documented API name; the ledger's own code goes in the details.
PUBLIC_LEDGER_CODES: dict[type[LedgerError], str] = {
    InvalidArgument: "validation_failed",
    InvalidAmount: "validation_failed",
    IdempotencyConflict: "idempotency_key_reused",
    LedgerClosed: "shutting_down",
}
# Litestar's own errors (routing, body size, method) under stable names.
HTTP_CODES: dict[int, str] = {
    400: "validation_failed",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    422: "validation_failed",
}
INFERENCE_STATUS: dict[type[InferenceError], int] = {
    InvalidRequest: 422,
    PromptTooLong: 422,
    ModelUnavailable: 503,
    EngineBusy: 503,
    ModelLoadFailed: 503,
    OutOfMemory: 503,
    # A remote engine refused, was unreachable, timed out or failed before anything streamed.
    UpstreamError: 503,
}
RETRY_AFTER_BUSY_S = 2


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _status_for(exc: Exception, table: dict[Any, int], default: int) -> int:
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return default


def _json(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(content=body, status_code=status, media_type=MediaType.JSON, headers=headers)


def service_error_handler(_: Request[Any, Any, Any], exc: errors.ServiceError) -> Response[Any]:
    status = _status_for(exc, SERVICE_STATUS, 400)
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == 503:
        headers.setdefault("Retry-After", str(RETRY_AFTER_BUSY_S))
    return _json(status, error_body(exc.code, exc.message, exc.details), headers)


def ledger_error_handler(_: Request[Any, Any, Any], exc: LedgerError) -> Response[Any]:
    status = _status_for(exc, LEDGER_STATUS, 409)
    if status >= 500:
        log.error("ledger_unavailable", code=exc.code, error=exc.message)
    details = _plain(exc.details)
    code = next(
        (PUBLIC_LEDGER_CODES[cls] for cls in type(exc).__mro__ if cls in PUBLIC_LEDGER_CODES),
        exc.code,
    )
    if code != exc.code:
        details["ledger_code"] = exc.code
    headers = {"Retry-After": str(RETRY_AFTER_BUSY_S)} if status in (429, 503) else None
    return _json(status, error_body(code, exc.message, details), headers)


def inference_error_handler(_: Request[Any, Any, Any], exc: InferenceError) -> Response[Any]:
    status = _status_for(exc, INFERENCE_STATUS, 503)
    headers = {"Retry-After": str(RETRY_AFTER_BUSY_S)} if status == 503 else None
    return _json(status, error_body(exc.code, exc.message), headers)


def http_exception_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    details: dict[str, Any] = {}
    message = str(exc.detail)
    if isinstance(exc, ValidationException) and exc.extra:
        details["errors"] = exc.extra
        if _body_missing(exc.extra):
            message = "this endpoint needs a JSON request body"
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return _json(exc.status_code, error_body(code, message, details), exc.headers)


def _body_missing(errors: Any) -> bool:
    """Litestar reports a missing body as the bare KeyError text "'data'" on key "data"."""
    return isinstance(errors, list) and any(
        isinstance(error, dict) and error.get("key") == "data" and error.get("message") == "'data'"
        for error in errors
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, RecursionError) and "deserializ" in str(exc):
        # msgspec refuses JSON nested deeper than it recurses with RecursionError, which
        # Litestar lets through: a malformed body, not a server failure.
        return _json(400, error_body("validation_failed", "the JSON body is nested too deeply"))
    if is_storage_busy(exc):
        log.warning("storage_busy", path=request.url.path, error=str(exc)[:200])
        return _json(
            503,
            error_body("storage_busy", "the database is busy; retry shortly"),
            {"Retry-After": str(RETRY_AFTER_BUSY_S)},
        )
    if isinstance(exc, DBAPIError) and "0x00" in str(exc):
        # PostgreSQL text cannot hold NUL. Inputs are checked for it where they enter; this
        # keeps one that slipped through a client error on both backends' behalf, not a 500.
        log.warning("nul_refused_by_database", path=request.url.path)
        return _json(422, error_body("validation_failed", "text must not contain NUL characters"))
    log.exception("unhandled_error", path=request.url.path, error_type=type(exc).__name__)
    return _json(
        HTTP_500_INTERNAL_SERVER_ERROR,
        error_body("internal_error", "the server failed; the request id identifies the log lines"),
    )


def is_storage_busy(exc: BaseException) -> bool:
    """A driver error saying another transaction held a lock for longer than the busy
    timeout: SQLite's "database is locked"/"busy", PostgreSQL's lock_not_available (55P03)
    and a lock or statement timeout (57014). Nothing was written, so a retry is safe."""
    if not isinstance(exc, OperationalError):
        return False
    text = str(exc.orig).lower()
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return (
        "database is locked" in text
        or "database is busy" in text
        or sqlstate
        in (
            "55P03",
            "57014",
        )
    )


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value if isinstance(value, str | int | float | bool) else str(value)
        for key, value in details.items()
    }


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    errors.ServiceError: service_error_handler,
    LedgerError: ledger_error_handler,
    InferenceError: inference_error_handler,
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}
