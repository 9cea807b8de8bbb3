"""Errors raised by the web application services. They carry a stable `code` and never know
about HTTP: `web.exception_handlers` maps them (and ledger/inference errors) to responses."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every web domain error; `code` is the machine-readable error name."""

    code = "service_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ValidationFailed(ServiceError):
    code = "validation_failed"


class NotAuthenticated(ServiceError):
    code = "not_authenticated"


class PermissionDenied(ServiceError):
    code = "permission_denied"


class AccountDisabled(PermissionDenied):
    """An admin disabled this account: it cannot sign in or use its credentials."""

    code = "account_disabled"


class RegistrationClosed(PermissionDenied):
    """Self-service registration is switched off (LEDGERCHAT_AUTH_REGISTRATION_MODE)."""

    code = "registration_closed"


class InviteInvalid(PermissionDenied):
    """Registration needs an invite code, and the one given is unknown, used or expired."""

    code = "invite_invalid"


class NotFound(ServiceError):
    code = "not_found"


class AlreadyExists(ServiceError):
    code = "already_exists"


class LoginLocked(ServiceError):
    """Too many failed logins for an account from a client address."""

    code = "login_locked"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class RateLimited(ServiceError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class IdempotencyKeyReused(ServiceError):
    """The Idempotency-Key was used before for a different request body."""

    code = "idempotency_key_reused"


class RequestInProgress(ServiceError):
    """A request with this Idempotency-Key is still running."""

    code = "request_in_progress"


class CreditsExhausted(ServiceError):
    """The hold for the worst-case cost does not fit in the available credits."""

    code = "insufficient_credits"

    def __init__(
        self, message: str, *, available: int, required: int, price: dict[str, Any]
    ) -> None:
        super().__init__(message, available=available, required=required, price=price)


class BudgetExhausted(ServiceError):
    """The hold for the worst-case cost would take a budget (an API key's limit, a user's
    cap) past its limit in its current period. Details: `limit` (which one: key_period,
    key_lifetime, self_cap, admin_cap), `period`, `limit_credits`, `left_credits`,
    `required`, `resets_at` (ISO time, null for a lifetime limit)."""

    code = "budget_exceeded"


class ShuttingDown(ServiceError):
    code = "shutting_down"


class ModelLoading(ServiceError):
    """The model is still loading (the port opens before the default model is loaded): the
    chat is refused at once, before anything is claimed or held, instead of waiting."""

    code = "model_loading"

    def __init__(self, message: str, *, model_id: str, retry_after_s: int) -> None:
        super().__init__(message, model_id=model_id, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class TooManyChats(RateLimited):
    """The user already has LEDGERCHAT_CHAT_MAX_CONCURRENT_PER_USER chats streaming (over every
    web process); refused before anything is claimed or held."""

    code = "too_many_chats"


class LimitsUnavailable(ServiceError):
    """Redis, where the limits are counted across processes, is configured but does not
    answer: a chat is refused (fail closed) rather than served without a limit."""

    code = "limits_unavailable"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s
