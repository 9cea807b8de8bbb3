"""The service's settings models: one pydantic-settings section per concern (server, database,
auth, rate limits, billing, chat, models), the `Settings` that holds them all, and the web-owned
limits (`MAX_MESSAGE_CHARS`, ...) imported where used. Every field has a default, an environment
variable (the section's prefix plus the field name upper-cased) and a docstring, from which
`python -m web.config_docs` writes docs/configuration.md; adding a setting is one annotated line
plus its docstring. Reading the environment and `.env` is `web.settings.loading`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from inference.catalog import MAX_NEW_TOKENS_CAP
from ledger.domain import MAX_KEY_LENGTH
from web.request_guard import parse_networks

ENV_PREFIX = "LEDGERCHAT_"
MIN_HOLD_TTL_S = 2
LOG_LEVELS = ("debug", "info", "warning", "error")
API_KEY_SCOPES = ("chat", "read", "write")
MAX_PASSWORD_STRENGTH = 4  # zxcvbn scores run 0-4
# Hard ceilings set by request schemas and columns; settings may only lower them.
MAX_PASSWORD_CHARS = 1024
MAX_MESSAGE_CHARS = 100_000
"""Longest chat message any request schema accepts (LEDGERCHAT_CHAT_MAX_MESSAGE_CHARS lowers it)."""


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=ENV_PREFIX + prefix,
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )


class Section(BaseSettings):
    """A concern's settings. Constructing one takes only the given values (and defaults);
    `load_settings` reads the environment and `.env` for all of them at once."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class ServerSettings(Section):
    """Where the HTTP server listens and how it behaves."""

    model_config = _config("")

    host: str = "127.0.0.1"
    """Interface uvicorn binds to."""
    port: int = Field(default=8000, ge=1, le=65535)
    """TCP port uvicorn binds to (1-65535)."""
    max_request_body_bytes: int = Field(default=1_048_576, gt=0)
    """Largest accepted request body; bigger bodies get 413."""
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """How long graceful shutdown waits for running streams before ending them (error
    `shutting_down`, hold released)."""
    log_level: str = "info"
    """Minimum level of the JSON log lines (debug, info, warning, error)."""
    data_dir: Path = Path("data")
    """Directory of the default SQLite database file; when set, converted models are cached in
    its `models` folder too (else in ~/.cache/ledgerchat/models). Must not be empty."""
    ui_enabled: bool = True
    """Serve the Gradio UI at / (when the UI package is importable)."""
    trusted_proxies: str = ""
    """Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For is
    believed; empty means the connection's peer is always the client."""
    public_url: str = ""
    """The URL browsers reach the service at (`https://chat.example.com`): the UI's root URL
    and the only accepted Origin; empty means the bind address and the request's Host."""
    metrics_token: str = ""
    """Bearer token /metrics requires; empty means /metrics answers loopback clients only."""
    csv_export_ttl_s: int = Field(default=600, gt=0)
    """How long a CSV export of the UI stays on disk for its download before it is deleted."""
    workers: int = Field(default=1, ge=1, le=64)
    """Web processes `serve` runs, on consecutive ports from LEDGERCHAT_PORT (1-64); more than
    one needs LEDGERCHAT_REDIS_URL and a remote model catalog (see docs/deployment.md)."""
    allow_model_per_worker: bool = False
    """Let `serve --workers N` (N > 1) start with in-process models: each process then loads
    its own copy of every model it serves (N times the memory)."""
    metrics_dir: Path | None = None
    """Folder of the shared metric files of `serve --workers` (cleared at each start); unset
    means `<data_dir>/metrics`."""

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: give a directory, or unset it for the default ./data")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_parse(cls, value: str) -> str:
        parse_networks(value)  # its ValueError names the entry that does not parse
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url_is_an_origin(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (
            parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/")
        ):
            raise ValueError(f"must be http(s)://host[:port] without a path, got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value


class DatabaseSettings(Section):
    """The one database shared by the ledger and the web tables."""

    model_config = _config("DATABASE_")

    url: str = ""
    """Database URL (`sqlite:///...`, `postgresql://...` or their async forms, which are picked
    anyway); empty means `sqlite+aiosqlite:///<data_dir>/ledgerchat.db`."""
    pool_size: int = Field(default=10, gt=0)
    """Connections kept open to PostgreSQL (ignored for SQLite)."""


class AuthSettings(Section):
    """Passwords, tokens and login lockout."""

    model_config = _config("AUTH_")

    jwt_secret: str = ""
    """HS256 signing key for access tokens; empty means a key `serve` generates once and keeps
    in `<data_dir>/jwt-secret` (mode 0600), so a restart keeps everyone signed in."""
    access_token_ttl_s: int = Field(default=3600, gt=0)
    """Lifetime of a JWT access token."""
    refresh_token_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)
    """Lifetime of a refresh token (each rotation issues a new one with a fresh lifetime)."""
    password_min_length: int = Field(default=10, gt=0)
    """Shortest accepted password."""
    password_max_length: int = Field(default=256, gt=0, le=MAX_PASSWORD_CHARS)
    """Longest accepted password (bounds hashing cost)."""
    argon2_time_cost: int = Field(default=2, gt=0)
    """argon2id iterations; changing it rehashes passwords on next login."""
    argon2_memory_cost_kib: int = Field(default=19_456, gt=0)
    """argon2id memory in KiB; changing it rehashes passwords on next login."""
    argon2_parallelism: int = Field(default=1, gt=0)
    """argon2id lanes."""
    lockout_failures: int = Field(default=5, gt=0)
    """Failed logins for one account within the window that lock it for that client."""
    lockout_window_s: int = Field(default=15 * 60, gt=0)
    """Window over which failed logins are counted, and how long the lock lasts."""
    max_api_keys_per_user: int = Field(default=20, gt=0)
    """Active API keys a single user may hold."""
    registration_mode: Literal["open", "invite", "closed"] = "open"
    """Who may register over the API and UI: `open`, `invite` (a single-use code an admin
    made) or `closed` (only `ledgerchat user create`)."""
    signups_per_address_per_hour: int = Field(default=5, ge=0)
    """Registrations one client address may make per hour; 0 means no limit."""
    password_min_strength: int = Field(default=2, ge=0, le=MAX_PASSWORD_STRENGTH)
    """Lowest accepted zxcvbn score (0-4) of a new password; 0 turns the check off."""
    max_concurrent_password_hashes: int = Field(default=2, gt=0)
    """argon2 hashes and verifications running at once; more wait their turn, so a burst of
    registrations or logins cannot take every CPU from other requests."""
    api_key_default_scopes: str = "chat read"
    """Scopes a new API key gets when its creator names none (space-separated, from `chat`,
    `read` and `write`)."""
    invite_default_ttl_s: int = Field(default=7 * 24 * 3600, ge=0)
    """Lifetime of an invite code when its creator gives none; 0 means it never expires."""

    @field_validator("api_key_default_scopes")
    @classmethod
    def _known_scopes(cls, value: str) -> str:
        scopes = value.split()
        if not scopes or any(scope not in API_KEY_SCOPES for scope in scopes):
            raise ValueError(f"must name one or more of {', '.join(API_KEY_SCOPES)}")
        return value

    @model_validator(mode="after")
    def _check_password_lengths(self) -> Self:
        if self.password_min_length > self.password_max_length:
            raise ValueError(
                "need LEDGERCHAT_AUTH_PASSWORD_MIN_LENGTH <= LEDGERCHAT_AUTH_PASSWORD_MAX_LENGTH"
                f" <= {MAX_PASSWORD_CHARS}, got {self.password_min_length} and"
                f" {self.password_max_length}"
            )
        return self


class RateLimitSettings(Section):
    """Request rate limits, applied per client address and per authenticated user."""

    model_config = _config("RATE_LIMIT_")

    per_address_per_minute: int = Field(default=600, gt=0)
    """Requests one client address may make per minute on any endpoint."""
    per_user_per_minute: int = Field(default=300, gt=0)
    """Requests one authenticated user may make per minute on any endpoint."""
    chat_per_user_per_minute: int = Field(default=60, gt=0)
    """Chat requests (/api/chat, /v1/chat/completions) one user may start per minute."""
    max_tracked_clients: int = Field(default=100_000, gt=0)
    """Bound on rate-limit buckets kept in memory (no Redis, or Redis unreachable); past it the
    in-memory counts start over (logged as `rate_limit_memory_reset`)."""


class RedisSettings(Section):
    """Redis, where several web processes count their limits together and register the prices
    they serve. Unset, limits are counted in memory and only one web process may run."""

    model_config = _config("REDIS_")

    url: str = ""
    """`redis://[:password@]host:port[/db]` (or `rediss://`); empty means limits in memory."""
    key_prefix: str = "ledgerchat:"
    """Prefix of every key the service writes, so several services can share one Redis."""
    timeout_s: float = Field(default=0.5, gt=0, le=30)
    """Connect and reply timeout of one Redis call; past it Redis counts as unreachable."""
    unavailable_retry_after_s: int = Field(default=5, gt=0)
    """Retry-After of the 503 `limits_unavailable` a chat gets while Redis is unreachable."""
    lease_ttl_s: int = Field(default=30, ge=3)
    """Lifetime of a chat's concurrency slot and of a process's registration unless renewed
    (every third of it): what a crashed process holds is free again after this long."""

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"must start with redis://, rediss:// or unix://, got {value!r}")
        return value


class BillingSettings(Section):
    """How chat requests are paid for."""

    model_config = _config("BILLING_")

    signup_grant_credits: int = Field(default=100, ge=0)
    """Credits granted to every new user, as a ledger event."""
    hold_ttl_s: int = Field(default=600, ge=MIN_HOLD_TTL_S)
    """Lifetime of a chat hold; a crashed process leaves holds the sweeper releases after it.
    A generation is stopped (timeout) at 3/4 of it (at most 60 s before), before it expires.
    Minimum 2; must not exceed LEDGERCHAT_LEDGER_HOLD_TTL_MAX_S."""
    sweep_interval_s: float = Field(default=30.0, gt=0)
    """How often expired holds are released."""
    checkpoint_interval_s: float = Field(default=300.0, ge=0)
    """How often the service signs the head of every account that moved (a checkpoint that
    receipts are verified against); 0 signs only on demand (admin API, CLI, receipts)."""
    receipt_link_ttl_s: int = Field(default=3600, ge=60, le=604_800)
    """How long a signed receipt link (the page's "receipt" under each reply, POST
    /api/receipts/{id}/link) opens its receipt without credentials (60 s to 7 days)."""
    partial_capture_on_disconnect: bool = True
    """On disconnect/Stop, capture what was generated (true) or release everything (false)."""
    max_idempotency_key_length: int = Field(default=MAX_KEY_LENGTH, gt=0)
    """Longest accepted Idempotency-Key header (at most the ledger's key length, 200)."""
    shrink_to_affordable: bool = True
    """In the page: when the balance or a budget cannot cover the requested max_tokens but
    covers a shorter reply, lower max_tokens to what is affordable (the reply says so) instead
    of refusing. The APIs do it when a request asks (`shrink_to_affordable` on /api/chat,
    `x_ledgerchat.shrink_to_affordable` on /v1)."""

    @field_validator("max_idempotency_key_length")
    @classmethod
    def _within_ledger_key_length(cls, value: int) -> int:
        if value > MAX_KEY_LENGTH:
            raise ValueError(f"must be at most {MAX_KEY_LENGTH} (the header and column limit)")
        return value

    alerts_webhook_url: str = ""
    """Where balance and budget alerts are posted as JSON (empty: no webhook; notices only)."""
    alerts_webhook_attempts: int = Field(default=5, ge=1, le=20)
    """Tries per alert event before it is given up (exponential back-off between them)."""
    alerts_webhook_queue_size: int = Field(default=1000, ge=1, le=100_000)
    """Alert events waiting for the webhook at most; more are dropped and logged."""


class ChatSettings(Section):
    """Limits on chat requests and stored conversations."""

    model_config = _config("CHAT_")

    default_model: str = "gemma-3-270m"
    """Model used when a request names none; /ready waits for it to be loaded."""
    max_message_chars: int = Field(default=16_000, gt=0, le=MAX_MESSAGE_CHARS)
    """Longest accepted new user message (at most 100000, the request schema's limit)."""
    max_history_messages: int = Field(default=40, gt=0)
    """Most recent conversation messages sent to the model as context."""
    default_max_tokens: int = Field(default=256, gt=0)
    """Completion token limit when the request gives none."""
    max_max_tokens: int = Field(default=2048, gt=0, le=MAX_NEW_TOKENS_CAP)
    """Highest completion token limit a request may ask for (at most the engine's 65536)."""
    conversations_page_size: int = Field(default=50, gt=0)
    """Conversations returned per page."""
    retention_days: int = Field(default=30, gt=0)
    """Prompt and response text in model_interactions is cleared after this many days."""
    retention_interval_s: float = Field(default=3600.0, gt=0)
    """How often the retention job runs."""
    max_concurrent_per_user: int = Field(default=32, gt=0)
    """Chats one user may have streaming at once, over every web process (counted in Redis
    when LEDGERCHAT_REDIS_URL is set); more get 429 `too_many_chats`."""

    @model_validator(mode="after")
    def _default_within_max(self) -> Self:
        if self.default_max_tokens > self.max_max_tokens:
            raise ValueError(
                "LEDGERCHAT_CHAT_DEFAULT_MAX_TOKENS exceeds LEDGERCHAT_CHAT_MAX_MAX_TOKENS"
            )
        return self


class ModelSettings(Section):
    """Which models exist (the inference engine's own knobs are LEDGERCHAT_INFERENCE_*)."""

    model_config = _config("")

    catalog: str = ""
    """Operator catalog file merged over the bundled one; empty means the bundled catalog."""


# The concerns, by attribute of `Settings`, in documentation order.
SECTIONS: dict[str, type[Section]] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "auth": AuthSettings,
    "rate_limit": RateLimitSettings,
    "redis": RedisSettings,
    "billing": BillingSettings,
    "chat": ChatSettings,
    "models": ModelSettings,
}


class Settings(BaseModel):
    """Every concern together; built once by `load_settings`."""

    model_config = ConfigDict(frozen=True)

    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    environ: Mapping[str, str] = Field(default_factory=dict, repr=False)
    """Every variable read (with the paths derived from the data directory), so the ledger,
    the engine and the catalog read theirs from the same source."""

    @property
    def database_url(self) -> str:
        """The configured URL or the default SQLite file in the data directory."""
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.server.data_dir / 'ledgerchat.db'}"
