"""Reading the service's settings: `.env` values (python-dotenv, pydantic-settings' own `.env`
reader) with the process environment on top, each section validated from them, a bad value
reported as one line naming its variable (`SettingsError`), and the ledger's and the engine's
variables derived from LEDGERCHAT_DATA_DIR. LEDGERCHAT_DATA_DIR is read here only: the paths
derived from it are handed to the ledger (its database URL) and the engine
(LEDGERCHAT_INFERENCE_CACHE_DIR). Nothing else in `web` reads `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from dotenv import dotenv_values
from pydantic import ValidationError

from web.settings.sections import SECTIONS, Section, Settings

S = TypeVar("S", bound=Section)


class SettingsError(ValueError):
    """A setting has a value that cannot be parsed or is out of range."""


def env_name(concern: str, field_name: str) -> str:
    """The environment variable that overrides `field_name` of `concern`."""
    return f"{SECTIONS[concern].model_config.get('env_prefix', '')}{field_name.upper()}"


def read_environment(
    environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
) -> dict[str, str]:
    """The `.env` values (read by python-dotenv, pydantic-settings' own `.env` parser) with the
    environment (`environ`, else the process's) on top."""
    values: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        values.update(
            (name, value) for name, value in dotenv_values(env_file).items() if value is not None
        )
    values.update(os.environ if environ is None else environ)
    return values


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
) -> Settings:
    """Read every concern once: `.env` values first, then the environment on top."""
    values = read_environment(environ, env_file)
    sections = {concern: _section(cls, values) for concern, cls in SECTIONS.items()}
    settings = Settings.model_validate(sections)
    settings = with_database_url(settings, settings.database.url)
    return settings.model_copy(update={"environ": {**derived_environment(settings), **values}})


def derived_environment(settings: Settings) -> dict[str, str]:
    """The variables of the ledger and the engine that follow from LEDGERCHAT_DATA_DIR, when
    it is set: the database URL and the converted-model cache in it. (Unset, the ledger's own
    default is the same ./data/ledgerchat.db and the engine keeps its per-user cache.)"""
    server = settings.server
    if "data_dir" not in server.model_fields_set:
        return {}
    return {
        "LEDGERCHAT_DATABASE_URL": settings.database_url,
        "LEDGERCHAT_INFERENCE_CACHE_DIR": str(server.data_dir / "models"),
    }


def _section(cls: type[S], values: Mapping[str, str]) -> S:
    """`cls` from `values` (keyed by variable name); a bad value is a one-line SettingsError."""
    prefix = cls.model_config.get("env_prefix", "")
    fields: dict[str, Any] = {
        name: values[prefix + name.upper()]
        for name in cls.model_fields
        if prefix + name.upper() in values
    }
    try:
        return cls(**fields)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc, prefix)) from None


def _one_line(exc: ValidationError, prefix: str) -> str:
    parts = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            name = prefix + str(error["loc"][0]).upper()
            parts.append(f"{name}: {message}, got {error['input']!r}")
        else:
            parts.append(message)
    return "; ".join(parts)


def with_database_url(settings: Settings, url: str) -> Settings:
    """`settings` with the database URL normalised (plain `sqlite:///`, `postgresql://` and
    `postgres://` get the async drivers); an unusable URL is a SettingsError."""
    from ledger.errors import LedgerError
    from ledger.storage.database import normalise_url

    normalised = ""
    if url.strip():
        try:
            normalised = normalise_url(url.strip())
        except (LedgerError, ValueError) as exc:
            raise SettingsError(f"LEDGERCHAT_DATABASE_URL: {exc}") from exc
    database = settings.database.model_copy(update={"url": normalised})
    return settings.model_copy(update={"database": database})


def check_settings(settings: Settings) -> None:
    """Validate every concern again, after values were replaced (command-line options)."""
    for concern in SECTIONS:
        section = getattr(settings, concern)
        try:
            type(section).model_validate(section.model_dump())
        except ValidationError as exc:
            prefix = section.model_config.get("env_prefix", "")
            raise SettingsError(_one_line(exc, prefix)) from None
