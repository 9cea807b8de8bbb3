"""Ledger settings: every limit and tunable of the ledger in one pydantic-settings model.

Each field has a default, a docstring and an environment variable `LEDGERCHAT_LEDGER_<FIELD>`;
pydantic-settings reads them (and a `.env` file in the working directory, which the environment
overrides), so booleans, numbers and errors follow the same rules as the other packages.
`default_database_url()` is the one place that resolves the ledger's default database; the web
service hands it the URL it derived from LEDGERCHAT_DATA_DIR (see web.settings).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "LEDGERCHAT_LEDGER_"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/ledgerchat.db"
PUBLIC_KEY_FILE = "ledger-signing-key.pub"


def default_database_url(environ: Mapping[str, str] | None = None) -> str:
    """LEDGERCHAT_DATABASE_URL, else an SQLite file `ledgerchat.db` in `./data`."""
    env = os.environ if environ is None else environ
    return env.get("LEDGERCHAT_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL


def default_public_key_path(environ: Mapping[str, str] | None = None) -> Path:
    """`<LEDGERCHAT_DATA_DIR, else ./data>/ledger-signing-key.pub`: where the service keeps the
    public half of the key that signs checkpoints (the audit checks signatures with it)."""
    env = os.environ if environ is None else environ
    return Path(env.get("LEDGERCHAT_DATA_DIR", "").strip() or "data") / PUBLIC_KEY_FILE


class LedgerSettings(BaseSettings):
    """Tunables of one ledger process. Construct directly, or `LedgerSettings.from_env()`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,  # NaN passes every comparison; infinity would overflow later
        use_attribute_docstrings=True,
    )

    snapshot_every: int = Field(default=100, gt=0)
    """Events per account between snapshots."""
    hold_ttl_default_s: float = Field(default=300.0, gt=0)
    """Hold lifetime when none is given."""
    hold_ttl_max_s: float = Field(default=86_400.0, gt=0)
    """Longest hold lifetime allowed."""
    max_active_holds_per_account: int = Field(default=64, gt=0)
    """Unresolved holds one account may have at once."""
    max_amount: int = Field(default=10**12, gt=0)
    """Largest amount of one command."""
    max_balance: int = Field(default=10**15, gt=0)
    """Largest posted balance of an account."""
    batch_size: int = Field(default=256, gt=0)
    """Commands the writer commits at once."""
    queue_size: int = Field(default=4096, gt=0)
    """Commands waiting for the writer."""
    write_retries: int = Field(default=5, ge=0)
    """Retries of a batch after a conflict or busy database."""
    retry_backoff_s: float = Field(default=0.01, ge=0)
    """First retry delay, doubled each retry."""
    busy_timeout_ms: int = Field(default=5_000, gt=0)
    """SQLite busy timeout."""
    command_timeout_s: float = Field(default=30.0, gt=0)
    """Longest a caller waits for the writer."""
    history_page_default: int = Field(default=50, gt=0)
    """History entries per page."""
    history_page_max: int = Field(default=200, gt=0)
    """Largest history page."""
    cache_max_accounts: int = Field(default=10_000, gt=0)
    """Account states the writer keeps in memory."""
    read_pool_size: int = Field(default=4, gt=0)
    """Database connections for reads."""
    sweep_interval_s: float = Field(default=30.0, ge=0)
    """Background expired-hold sweep period; 0 disables it."""
    sweep_batch_size: int = Field(default=500, gt=0)
    """Expired holds released per sweep."""
    audit_expired_hold_grace_s: float = Field(default=300.0, gt=0)
    """How long an expired hold may wait for the sweeper before the audit reports it."""

    @model_validator(mode="after")
    def _check_pairs(self) -> Self:
        if self.history_page_default > self.history_page_max:
            raise ValueError(
                f"{ENV_PREFIX}HISTORY_PAGE_DEFAULT (history_page_default) must not exceed "
                f"{ENV_PREFIX}HISTORY_PAGE_MAX"
            )
        if self.hold_ttl_default_s > self.hold_ttl_max_s:
            raise ValueError(
                f"{ENV_PREFIX}HOLD_TTL_DEFAULT_S (hold_ttl_default_s) must not exceed "
                f"{ENV_PREFIX}HOLD_TTL_MAX_S"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """`LedgerSettings(...)` takes only the given values (and defaults); the environment
        is read by `from_env`, so a test or a benchmark is not changed by the shell's."""
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LedgerSettings:
        """Defaults overridden by LEDGERCHAT_LEDGER_* variables: those of the process over
        those of `.env` (read by pydantic-settings), or only those of `environ`. A bad value
        is a one-line ValueError naming the variable."""
        if environ is None:
            values = {**DotEnvSettingsSource(cls)(), **EnvSettingsSource(cls)()}
        else:
            values = {
                name: environ[ENV_PREFIX + name.upper()]
                for name in cls.model_fields
                if environ.get(ENV_PREFIX + name.upper(), "").strip()
            }
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ValueError(one_line(exc, ENV_PREFIX)) from None


def one_line(exc: ValidationError, env_prefix: str) -> str:
    """A pydantic error as one line naming the environment variable and the field."""
    parts = []
    for error in exc.errors():
        if error["loc"]:
            field = str(error["loc"][0])
            parts.append(
                f"{env_prefix}{field.upper()} ({field}): {error['msg']}, got {error['input']!r}"
            )
        else:
            parts.append(str(error["msg"]).removeprefix("Value error, "))
    return "; ".join(parts)
