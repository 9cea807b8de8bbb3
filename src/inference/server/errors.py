"""Errors of the engine server and their translation, once, into OpenAI-shaped HTTP answers:
the engine's own errors (`inference.errors`) and the server's (`ApiError`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.errors import (
    EngineBusy,
    InferenceError,
    InvalidRequest,
    ModelLoadFailed,
    ModelUnavailable,
    OutOfMemory,
    PromptTooLong,
)
from inference.server.schemas import ErrorType

# Seconds a client should wait before retrying an engine that is busy or loading.
RETRY_AFTER_S = 1


@dataclass
class ApiError(Exception):
    """An answer other than success: HTTP status and OpenAI's error fields."""

    status: int
    message: str
    code: str
    error_type: ErrorType = "invalid_request_error"
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code, "invalid_request_error", param)


def unauthorized(message: str) -> ApiError:
    return ApiError(
        401,
        message,
        "invalid_api_key",
        "authentication_error",
        headers={"WWW-Authenticate": 'Bearer realm="ledgerchat-engine"'},
    )


def unavailable(message: str, code: str) -> ApiError:
    return ApiError(503, message, code, "server_error", headers={"Retry-After": str(RETRY_AFTER_S)})


def from_inference_error(exc: InferenceError, known_model_ids: frozenset[str]) -> ApiError:
    """The HTTP answer for an error the engine raised before generating."""
    if isinstance(exc, PromptTooLong):
        return bad_request(exc.message, "messages", "context_length_exceeded")
    if isinstance(exc, InvalidRequest):
        return bad_request(exc.message)
    if isinstance(exc, ModelUnavailable) and exc.model_id not in known_model_ids:
        return ApiError(404, exc.message, "model_not_found", "not_found_error", "model")
    if isinstance(exc, EngineBusy):
        return unavailable(exc.message, "engine_busy")
    if isinstance(exc, (ModelUnavailable, ModelLoadFailed, OutOfMemory)):
        return unavailable(exc.message, exc.code)
    return ApiError(500, exc.message, exc.code, "server_error")


# How a generation that did not end normally is answered: status, code, message.
FAILED_FINISH: dict[str, tuple[int, str, str]] = {
    "timeout": (504, "generation_timeout", "the generation ran past its deadline"),
    "error": (500, "generation_failed", "the generation failed"),
    "cancelled": (503, "engine_shutting_down", "the engine stopped the generation"),
}
