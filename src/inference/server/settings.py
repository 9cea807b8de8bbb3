"""Settings of `ledgerchat engine serve`: one pydantic-settings model read once by
`EngineServerSettings.from_env()` (LEDGERCHAT_ENGINE_* variables over a `.env` file), and the
rule that decides which bearer secret the server demands (`resolve_api_key`)."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict

from inference.settings import EnvSettings

ENV_PREFIX = "LEDGERCHAT_ENGINE_"
MIN_API_KEY_CHARS = 16
MAX_API_KEY_CHARS = 1024

UserPath = Annotated[Path, AfterValidator(Path.expanduser)]


class EngineServerError(ValueError):
    """The server cannot start with these settings (no secret, unreadable key file, ...)."""


class EngineServerSettings(EnvSettings):
    """`ledgerchat engine serve`: the local engine alone behind an OpenAI-compatible API, for
    `ledgerchat serve` processes (or anything else) on other hosts or in other processes."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)

    host: str = "127.0.0.1"
    """Address to bind; loopback by default. `--host` wins."""

    port: int = Field(default=8100, ge=1, le=65535)
    """TCP port. `--port` wins."""

    api_key: SecretStr | None = None
    """The shared bearer secret clients send (`Authorization: Bearer ...`), at least 16
    characters. Required unless LEDGERCHAT_ENGINE_API_KEY_FILE is set or the server is started
    with `--no-auth` on a loopback address."""

    api_key_file: UserPath | None = None
    """A file holding the bearer secret (first line; mode 0600 or stricter); read at start."""

    max_body_bytes: int = Field(default=4 * 2**20, ge=1024, le=256 * 2**20)
    """Largest request body accepted; larger ones are answered 413."""

    @classmethod
    def settings_error(cls, exc: ValidationError) -> EngineServerError:
        """`from_env`'s error: one line naming each bad variable (its value is not repeated)."""
        parts = [
            f"{ENV_PREFIX}{str(error['loc'][0]).upper() if error['loc'] else ''}: {error['msg']}"
            for error in exc.errors()
        ]
        return EngineServerError("; ".join(parts))


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_api_key(settings: EngineServerSettings, host: str, no_auth: bool) -> str | None:
    """The secret every protected request must carry, or None (no auth) when `no_auth` was
    asked for on a loopback address. Raises EngineServerError when none is configured, when it
    is too short, or when `no_auth` is asked for on an address other hosts can reach."""
    if no_auth:
        if not is_loopback(host):
            raise EngineServerError(
                f"--no-auth is only allowed on a loopback address, not on {host!r}: set "
                f"{ENV_PREFIX}API_KEY or {ENV_PREFIX}API_KEY_FILE instead"
            )
        return None
    if settings.api_key is not None and settings.api_key_file is not None:
        raise EngineServerError(f"set {ENV_PREFIX}API_KEY or {ENV_PREFIX}API_KEY_FILE, not both")
    if settings.api_key_file is not None:
        key = _read_key_file(settings.api_key_file)
        source = f"{ENV_PREFIX}API_KEY_FILE ({settings.api_key_file})"
    elif settings.api_key is not None:
        key = settings.api_key.get_secret_value().strip()
        source = f"{ENV_PREFIX}API_KEY"
    else:
        raise EngineServerError(
            f"no bearer secret: set {ENV_PREFIX}API_KEY or {ENV_PREFIX}API_KEY_FILE "
            "(or pass --no-auth on a loopback address)"
        )
    if not MIN_API_KEY_CHARS <= len(key) <= MAX_API_KEY_CHARS:
        raise EngineServerError(
            f"{source}: the secret must be {MIN_API_KEY_CHARS}..{MAX_API_KEY_CHARS} characters"
        )
    if not key.isprintable() or " " in key:
        raise EngineServerError(f"{source}: the secret must be printable, without spaces")
    return key


def _read_key_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EngineServerError(f"{ENV_PREFIX}API_KEY_FILE: cannot read {path}: {exc}") from None
    if not stat.S_ISREG(mode):
        raise EngineServerError(f"{ENV_PREFIX}API_KEY_FILE: {path} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise EngineServerError(
            f"{ENV_PREFIX}API_KEY_FILE: {path} is readable by others (chmod 600 it)"
        )
    lines = text.splitlines()
    return lines[0].strip() if lines else ""
