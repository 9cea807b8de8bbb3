"""Service settings: one frozen dataclass per concern, read once from LEDGERCHAT_* variables.

Every field has a default, an environment variable (the field name upper-cased, prefixed with
the concern's prefix) and a one-line docstring; docs/configuration.md lists them all. An
optional `.env` file supplies values that the real environment does not; the process
environment always wins. Nothing else in `web` reads `os.environ`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

ENV_PREFIX = "LEDGERCHAT_"
MIN_HOLD_TTL_S = 2
# Hard ceilings set by request schemas and columns; settings may only lower them.
MAX_PASSWORD_CHARS = 1024
MAX_IDEMPOTENCY_KEY_CHARS = 200


class SettingsError(ValueError):
    """A setting has a value that cannot be parsed or is out of range."""


@dataclasses.dataclass(frozen=True, slots=True)
class ServerSettings:
    """Where the HTTP server listens and how it behaves."""

    host: str = "127.0.0.1"
    """Interface uvicorn binds to."""
    port: int = 8000
    """TCP port uvicorn binds to."""
    max_request_body_bytes: int = 1_048_576
    """Largest accepted request body; bigger bodies get 413."""
    shutdown_grace_s: float = 10.0
    """How long graceful shutdown waits for running streams before cancelling them."""
    log_level: str = "info"
    """Minimum level of the JSON log lines (debug, info, warning, error)."""
    data_dir: Path = Path("data")
    """Directory for the default SQLite database file (must not be empty)."""
    ui_enabled: bool = True
    """Serve the Gradio UI at / (when the UI package is importable)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """The one database shared by the ledger and the web tables."""

    url: str = ""
    """Database URL (`sqlite:///...`, `postgresql://...` or their async forms, which are picked
    anyway); empty means `sqlite+aiosqlite:///<data_dir>/ledgerchat.db`."""
    pool_size: int = 10
    """Connections kept open to PostgreSQL (ignored for SQLite)."""


@dataclasses.dataclass(frozen=True, slots=True)
class AuthSettings:
    """Passwords, tokens and login lockout."""

    jwt_secret: str = ""
    """HS256 signing key for access tokens; empty means a random key per process start."""
    access_token_ttl_s: int = 3600
    """Lifetime of a JWT access token."""
    refresh_token_ttl_s: int = 30 * 24 * 3600
    """Lifetime of a refresh token (each rotation issues a new one with a fresh lifetime)."""
    password_min_length: int = 10
    """Shortest accepted password."""
    password_max_length: int = 256
    """Longest accepted password (bounds hashing cost)."""
    argon2_time_cost: int = 2
    """argon2id iterations; changing it rehashes passwords on next login."""
    argon2_memory_cost_kib: int = 19_456
    """argon2id memory in KiB; changing it rehashes passwords on next login."""
    argon2_parallelism: int = 1
    """argon2id lanes."""
    lockout_failures: int = 5
    """Failed logins for one account within the window that lock it for that client."""
    lockout_window_s: int = 15 * 60
    """Window over which failed logins are counted, and how long the lock lasts."""
    max_api_keys_per_user: int = 20
    """Active API keys a single user may hold."""
    registration_mode: str = "open"
    """Who may register over the API and UI: `open`, `invite` (a single-use code an admin
    made) or `closed` (only `ledgerchat user create`)."""
    signups_per_address_per_hour: int = 5
    """Registrations one client address may make per hour; 0 means no limit."""
    password_min_strength: int = 2
    """Lowest accepted zxcvbn score (0-4) of a new password; 0 turns the check off."""
    max_concurrent_password_hashes: int = 2
    """argon2 hashes and verifications running at once; more wait their turn, so a burst of
    registrations or logins cannot take every CPU from other requests."""
    api_key_default_scopes: str = "chat read"
    """Scopes a new API key gets when its creator names none (space-separated, from `chat`,
    `read` and `write`)."""
    invite_default_ttl_s: int = 7 * 24 * 3600
    """Lifetime of an invite code when its creator gives none; 0 means it never expires."""


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Request rate limits, applied per client address and per authenticated user."""

    per_address_per_minute: int = 600
    """Requests one client address may make per minute on any endpoint."""
    per_user_per_minute: int = 300
    """Requests one authenticated user may make per minute on any endpoint."""
    chat_per_user_per_minute: int = 60
    """Chat requests (/api/chat, /v1/chat/completions) one user may start per minute."""
    max_tracked_clients: int = 100_000
    """Bound on rate-limit buckets kept in memory; the oldest are dropped first."""


@dataclasses.dataclass(frozen=True, slots=True)
class BillingSettings:
    """How chat requests are paid for."""

    signup_grant_credits: int = 100
    """Credits granted to every new user, as a ledger event."""
    hold_ttl_s: int = 600
    """Lifetime of a chat hold; a crashed process leaves holds the sweeper releases after it.
    A generation is stopped (timeout) at 3/4 of it (at most 60 s before), before it expires."""
    sweep_interval_s: float = 30.0
    """How often expired holds are released."""
    partial_capture_on_disconnect: bool = True
    """On disconnect/Stop, capture what was generated (true) or release everything (false)."""
    max_idempotency_key_length: int = 200
    """Longest accepted Idempotency-Key header."""


@dataclasses.dataclass(frozen=True, slots=True)
class ChatSettings:
    """Limits on chat requests and stored conversations."""

    default_model: str = "gemma-3-270m"
    """Model used when a request names none; /ready waits for it to be loaded."""
    max_message_chars: int = 16_000
    """Longest accepted new user message."""
    max_history_messages: int = 40
    """Most recent conversation messages sent to the model as context."""
    default_max_tokens: int = 256
    """Completion token limit when the request gives none."""
    max_max_tokens: int = 2048
    """Highest completion token limit a request may ask for."""
    conversations_page_size: int = 50
    """Conversations returned per page."""
    retention_days: int = 30
    """Prompt and response text in model_interactions is cleared after this many days."""
    retention_interval_s: float = 3600.0
    """How often the retention job runs."""


@dataclasses.dataclass(frozen=True, slots=True)
class ModelSettings:
    """Which models exist (the inference engine's own knobs are LEDGERCHAT_INFERENCE_*)."""

    catalog: str = ""
    """Operator catalog file merged over the bundled one; empty means the bundled catalog."""


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Every concern together; built once by `load_settings`."""

    server: ServerSettings = dataclasses.field(default_factory=ServerSettings)
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    auth: AuthSettings = dataclasses.field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = dataclasses.field(default_factory=RateLimitSettings)
    billing: BillingSettings = dataclasses.field(default_factory=BillingSettings)
    chat: ChatSettings = dataclasses.field(default_factory=ChatSettings)
    models: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    environ: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    """Every variable read, so the ledger and engine settings come from the same source."""

    @property
    def database_url(self) -> str:
        """The configured URL or the default SQLite file in the data directory."""
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.server.data_dir / 'ledgerchat.db'}"


# Prefix per concern: LEDGERCHAT_<PREFIX><FIELD>. Server and database fields read without a
# concern prefix where the name is already unambiguous (LEDGERCHAT_HOST, LEDGERCHAT_DATABASE_URL).
_PREFIXES: dict[str, str] = {
    "server": "",
    "database": "DATABASE_",
    "auth": "AUTH_",
    "rate_limit": "RATE_LIMIT_",
    "billing": "BILLING_",
    "chat": "CHAT_",
    "models": "",
}

T = TypeVar("T")


def env_name(concern: str, field_name: str) -> str:
    """The environment variable that overrides `field_name` of `concern`."""
    return f"{ENV_PREFIX}{_PREFIXES[concern]}{field_name.upper()}"


def _parse(raw: str, kind: Any, name: str) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw)
        return raw
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from exc


def _build(cls: type[T], concern: str, values: Mapping[str, str]) -> T:
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = env_name(concern, field.name)
        if name in values:
            kwargs[field.name] = _parse(values[name], hints[field.name], name)
    return cls(**kwargs)


LOG_LEVELS = ("debug", "info", "warning", "error")
REGISTRATION_MODES = ("open", "invite", "closed")
API_KEY_SCOPES = ("chat", "read", "write")
MAX_PASSWORD_STRENGTH = 4


def read_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines (comments and blank lines skipped, optional quotes stripped; in an
    unquoted value, ` #` starts a comment)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "=" not in stripped:
            raise SettingsError(f"{path}:{line_number}: expected KEY=VALUE")
        key, _, value = stripped.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif value.startswith("#"):
            value = ""
        elif " #" in value or "\t#" in value:
            value = re.split(r"\s#", value, maxsplit=1)[0].rstrip()
        values[key.strip()] = value
    return values


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
) -> Settings:
    """Read every concern once: `.env` values first, then the environment on top."""
    values: dict[str, str] = {}
    if env_file is not None:
        values.update(read_env_file(env_file))
    values.update(os.environ if environ is None else environ)
    if "LEDGERCHAT_DATA_DIR" in values and not values["LEDGERCHAT_DATA_DIR"].strip():
        raise SettingsError(
            "LEDGERCHAT_DATA_DIR is empty: give a directory, or unset it for the default ./data"
        )
    settings = Settings(
        server=_build(ServerSettings, "server", values),
        database=_build(DatabaseSettings, "database", values),
        auth=_build(AuthSettings, "auth", values),
        rate_limit=_build(RateLimitSettings, "rate_limit", values),
        billing=_build(BillingSettings, "billing", values),
        chat=_build(ChatSettings, "chat", values),
        models=_build(ModelSettings, "models", values),
        environ=values,
    )
    check_settings(settings)
    return with_database_url(settings, settings.database.url)


def with_database_url(settings: Settings, url: str) -> Settings:
    """`settings` with the database URL normalised (plain `sqlite:///`, `postgresql://` and
    `postgres://` get the async drivers); an unusable URL is a SettingsError."""
    if not url.strip():
        return dataclasses.replace(
            settings, database=dataclasses.replace(settings.database, url="")
        )
    from ledger.errors import LedgerError
    from ledger.storage.database import normalise_url

    try:
        normalised = normalise_url(url.strip())
    except (LedgerError, ValueError) as exc:
        raise SettingsError(f"LEDGERCHAT_DATABASE_URL: {exc}") from exc
    return dataclasses.replace(
        settings, database=dataclasses.replace(settings.database, url=normalised)
    )


def check_settings(settings: Settings) -> None:
    """Reject values that would make the service misbehave instead of failing later."""
    for concern in _PREFIXES:
        values = getattr(settings, concern)
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SettingsError(f"{env_name(concern, field.name)} must be a finite number")
    positive = {
        "LEDGERCHAT_PORT": settings.server.port,
        "LEDGERCHAT_MAX_REQUEST_BODY_BYTES": settings.server.max_request_body_bytes,
        env_name("database", "pool_size"): settings.database.pool_size,
        env_name("auth", "access_token_ttl_s"): settings.auth.access_token_ttl_s,
        env_name("auth", "refresh_token_ttl_s"): settings.auth.refresh_token_ttl_s,
        env_name("auth", "password_min_length"): settings.auth.password_min_length,
        env_name("auth", "argon2_time_cost"): settings.auth.argon2_time_cost,
        env_name("auth", "argon2_memory_cost_kib"): settings.auth.argon2_memory_cost_kib,
        env_name("auth", "argon2_parallelism"): settings.auth.argon2_parallelism,
        env_name("auth", "lockout_failures"): settings.auth.lockout_failures,
        env_name("auth", "lockout_window_s"): settings.auth.lockout_window_s,
        env_name("auth", "max_api_keys_per_user"): settings.auth.max_api_keys_per_user,
        env_name("auth", "max_concurrent_password_hashes"): (
            settings.auth.max_concurrent_password_hashes
        ),
        env_name("billing", "hold_ttl_s"): settings.billing.hold_ttl_s,
        env_name("billing", "sweep_interval_s"): settings.billing.sweep_interval_s,
        env_name("billing", "max_idempotency_key_length"): (
            settings.billing.max_idempotency_key_length
        ),
        env_name("chat", "max_message_chars"): settings.chat.max_message_chars,
        env_name("chat", "max_history_messages"): settings.chat.max_history_messages,
        env_name("chat", "max_max_tokens"): settings.chat.max_max_tokens,
        env_name("chat", "default_max_tokens"): settings.chat.default_max_tokens,
        env_name("chat", "conversations_page_size"): settings.chat.conversations_page_size,
        env_name("chat", "retention_days"): settings.chat.retention_days,
        env_name("chat", "retention_interval_s"): settings.chat.retention_interval_s,
        env_name(
            "rate_limit", "per_address_per_minute"
        ): settings.rate_limit.per_address_per_minute,
        env_name("rate_limit", "per_user_per_minute"): settings.rate_limit.per_user_per_minute,
        env_name("rate_limit", "chat_per_user_per_minute"): (
            settings.rate_limit.chat_per_user_per_minute
        ),
        env_name("rate_limit", "max_tracked_clients"): settings.rate_limit.max_tracked_clients,
    }
    for name, value in positive.items():
        if value <= 0:
            raise SettingsError(f"{name} must be positive, got {value}")
    if settings.server.shutdown_grace_s < 0:
        raise SettingsError("LEDGERCHAT_SHUTDOWN_GRACE_S must not be negative")
    auth = settings.auth
    if not auth.password_min_length <= auth.password_max_length <= MAX_PASSWORD_CHARS:
        raise SettingsError(
            "need LEDGERCHAT_AUTH_PASSWORD_MIN_LENGTH <= LEDGERCHAT_AUTH_PASSWORD_MAX_LENGTH"
            f" <= {MAX_PASSWORD_CHARS}, got {auth.password_min_length} and"
            f" {auth.password_max_length}"
        )
    check_registration_settings(auth)
    if settings.billing.max_idempotency_key_length > MAX_IDEMPOTENCY_KEY_CHARS:
        raise SettingsError(
            "LEDGERCHAT_BILLING_MAX_IDEMPOTENCY_KEY_LENGTH must be at most"
            f" {MAX_IDEMPOTENCY_KEY_CHARS} (the header and column limit)"
        )
    if settings.chat.default_max_tokens > settings.chat.max_max_tokens:
        raise SettingsError(
            "LEDGERCHAT_CHAT_DEFAULT_MAX_TOKENS exceeds LEDGERCHAT_CHAT_MAX_MAX_TOKENS"
        )
    if settings.billing.hold_ttl_s < MIN_HOLD_TTL_S:
        raise SettingsError(f"LEDGERCHAT_BILLING_HOLD_TTL_S must be at least {MIN_HOLD_TTL_S}")
    if settings.billing.signup_grant_credits < 0:
        raise SettingsError("LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS must not be negative")
    if settings.server.port > 65535:
        raise SettingsError(f"LEDGERCHAT_PORT out of range: {settings.server.port}")
    if settings.server.log_level.lower() not in LOG_LEVELS:
        raise SettingsError(
            f"LEDGERCHAT_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)},"
            f" got {settings.server.log_level!r}"
        )


def check_registration_settings(auth: AuthSettings) -> None:
    """Registration mode, signup limit, password strength and default key scopes."""
    if auth.registration_mode not in REGISTRATION_MODES:
        raise SettingsError(
            f"LEDGERCHAT_AUTH_REGISTRATION_MODE must be one of {', '.join(REGISTRATION_MODES)},"
            f" got {auth.registration_mode!r}"
        )
    if auth.signups_per_address_per_hour < 0:
        raise SettingsError("LEDGERCHAT_AUTH_SIGNUPS_PER_ADDRESS_PER_HOUR must not be negative")
    if auth.invite_default_ttl_s < 0:
        raise SettingsError("LEDGERCHAT_AUTH_INVITE_DEFAULT_TTL_S must not be negative")
    if not 0 <= auth.password_min_strength <= MAX_PASSWORD_STRENGTH:
        raise SettingsError(
            f"LEDGERCHAT_AUTH_PASSWORD_MIN_STRENGTH must be 0-{MAX_PASSWORD_STRENGTH},"
            f" got {auth.password_min_strength}"
        )
    scopes = auth.api_key_default_scopes.split()
    if not scopes or any(scope not in API_KEY_SCOPES for scope in scopes):
        raise SettingsError(
            "LEDGERCHAT_AUTH_API_KEY_DEFAULT_SCOPES must name one or more of"
            f" {', '.join(API_KEY_SCOPES)}, got {auth.api_key_default_scopes!r}"
        )
