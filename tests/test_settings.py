"""The one settings loader: every package's pydantic-settings models parse booleans alike, name
the variable of a bad value in one line, read `.env` under the environment, and are what
docs/configuration.md is generated from."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from inference.catalog import CatalogError, load_catalog
from inference.server.settings import EngineServerSettings
from inference.settings import InferenceSettings
from ledger.settings import LedgerSettings, default_database_url
from web import config_docs
from web.settings import SECTIONS, SettingsError, load_settings

ALL_MODELS: list[type[BaseSettings]] = [
    *SECTIONS.values(),
    InferenceSettings,
    EngineServerSettings,
    LedgerSettings,
]
BOOLEAN_SPELLINGS = [
    ("on", True),
    ("off", False),
    ("yes", True),
    ("no", False),
    ("1", True),
    ("0", False),
    ("true", True),
    ("FALSE", False),
]


def env_name(cls: type[BaseSettings], field: str) -> str:
    return f"{cls.model_config.get('env_prefix', '')}{field.upper()}"


def fields_of(kind: type) -> list[tuple[type[BaseSettings], str]]:
    return [
        (cls, name)
        for cls in ALL_MODELS
        for name, info in cls.model_fields.items()
        if info.annotation is kind
    ]


def load(cls: type[BaseSettings], environ: dict[str, str]) -> Any:
    """The model `cls` as its package loads it from `environ`."""
    if cls is LedgerSettings:
        return LedgerSettings.from_env(environ)
    if cls is InferenceSettings:
        return InferenceSettings.from_env(environ)
    if cls is EngineServerSettings:
        return EngineServerSettings.from_env(environ)
    concern = next(name for name, section in SECTIONS.items() if section is cls)
    return getattr(load_settings(environ=environ, env_file=None), concern)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No LEDGERCHAT_* variable of the developer's, in an empty working directory."""
    import os

    for name in list(os.environ):
        if name.startswith("LEDGERCHAT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def named(items: list[tuple[type[BaseSettings], str]]) -> list[Any]:
    return [pytest.param(cls, field, id=env_name(cls, field)) for cls, field in items]


class TestBooleans:
    @pytest.mark.parametrize(("cls", "field"), named(fields_of(bool)))
    @pytest.mark.parametrize(("raw", "expected"), BOOLEAN_SPELLINGS)
    def test_every_boolean_setting_takes_the_same_spellings(
        self, clean_environment: Path, cls: type[BaseSettings], field: str, raw: str, expected: bool
    ) -> None:
        """on/off, yes/no, 1/0 and true/false (any case) mean the same in every section."""
        assert getattr(load(cls, {env_name(cls, field): raw}), field) is expected

    @pytest.mark.parametrize(("raw", "expected"), BOOLEAN_SPELLINGS)
    def test_catalog_overrides_take_the_same_spellings(
        self, clean_environment: Path, raw: str, expected: bool
    ) -> None:
        """A per-model catalog override parses booleans like the settings do."""
        variable = "LEDGERCHAT_MODEL_GEMMA_3_270M__LOAD_AT_START"
        catalog = load_catalog(environ={variable: raw})
        assert catalog.get("gemma-3-270m").load_at_start is expected

    def test_a_non_boolean_is_refused_naming_the_variable(self, clean_environment: Path) -> None:
        """'maybe' is no boolean, in the settings or in a catalog override."""
        with pytest.raises(SettingsError, match="LEDGERCHAT_UI_ENABLED"):
            load_settings(environ={"LEDGERCHAT_UI_ENABLED": "maybe"}, env_file=None)
        variable = "LEDGERCHAT_MODEL_GEMMA_3_270M__LOAD_AT_START"
        with pytest.raises(CatalogError, match=variable):
            load_catalog(environ={variable: "maybe"})


class TestBadValues:
    @pytest.mark.parametrize(("cls", "field"), named(fields_of(int) + fields_of(float)))
    def test_a_malformed_number_is_one_line_naming_the_variable(
        self, clean_environment: Path, cls: type[BaseSettings], field: str
    ) -> None:
        """Every numeric setting of every package: the error is one line with the variable."""
        variable = env_name(cls, field)
        with pytest.raises(ValueError) as raised:
            load(cls, {variable: "twelve"})
        message = str(raised.value)
        assert variable in message and "\n" not in message, message

    @pytest.mark.parametrize(("cls", "field"), named(fields_of(float)))
    def test_non_finite_numbers_are_refused(
        self, clean_environment: Path, cls: type[BaseSettings], field: str
    ) -> None:
        """NaN and infinity pass comparisons or overflow later: every float setting refuses
        them, naming the variable."""
        for raw in ("nan", "inf"):
            with pytest.raises(ValueError, match=env_name(cls, field)):
                load(cls, {env_name(cls, field): raw})


ENV_FILE_CASES: list[tuple[str, Callable[[], Any], str, str]] = [
    (
        "LEDGERCHAT_LEDGER_BATCH_SIZE",
        lambda: LedgerSettings.from_env(),
        "batch_size",
        "LEDGERCHAT_LEDGER_QUEUE_SIZE",
    ),
    (
        "LEDGERCHAT_INFERENCE_QUEUE_LIMIT",
        lambda: InferenceSettings.from_env(),
        "queue_limit",
        "LEDGERCHAT_INFERENCE_MAX_BATCH_SIZE",
    ),
    (
        "LEDGERCHAT_ENGINE_PORT",
        lambda: EngineServerSettings.from_env(),
        "port",
        "LEDGERCHAT_ENGINE_HOST",
    ),
    (
        "LEDGERCHAT_RATE_LIMIT_PER_USER_PER_MINUTE",
        lambda: load_settings().rate_limit,
        "per_user_per_minute",
        "LEDGERCHAT_RATE_LIMIT_PER_ADDRESS_PER_MINUTE",
    ),
]


class TestEnvFile:
    @pytest.mark.parametrize(("variable", "loader", "field", "other"), ENV_FILE_CASES)
    def test_env_file_is_read_and_the_environment_wins(
        self,
        clean_environment: Path,
        monkeypatch: pytest.MonkeyPatch,
        variable: str,
        loader: Callable[[], Any],
        field: str,
        other: str,
    ) -> None:
        """Each package reads `.env` in the working directory by itself; a variable set in the
        environment wins over the same one in the file."""
        (clean_environment / ".env").write_text(
            f"# settings\n{variable}=7  # from the file\nexport {other}='9'\n"
        )
        assert getattr(loader(), field) == 7
        monkeypatch.setenv(variable, "11")
        assert getattr(loader(), field) == 11


class TestDataDir:
    def test_derived_paths_come_from_the_data_dir(self, clean_environment: Path) -> None:
        """LEDGERCHAT_DATA_DIR, read by web only, gives the database file and the engine's
        model cache; an explicit cache directory still wins."""
        settings = load_settings(environ={"LEDGERCHAT_DATA_DIR": "/srv/lc"}, env_file=None)
        assert settings.database_url == "sqlite+aiosqlite:////srv/lc/ledgerchat.db"
        engine = InferenceSettings.from_env(settings.environ)
        assert engine.cache_dir == Path("/srv/lc/models")
        explicit = load_settings(
            environ={"LEDGERCHAT_DATA_DIR": "/srv/lc", "LEDGERCHAT_INFERENCE_CACHE_DIR": "/c"},
            env_file=None,
        )
        assert InferenceSettings.from_env(explicit.environ).cache_dir == Path("/c")

    def test_no_data_dir_keeps_the_home_cache(self, clean_environment: Path) -> None:
        """Without LEDGERCHAT_DATA_DIR the database is ./data/ledgerchat.db and converted
        models stay in the per-user cache."""
        settings = load_settings(environ={}, env_file=None)
        assert settings.database_url == "sqlite+aiosqlite:///data/ledgerchat.db"
        assert settings.database_url == default_database_url(settings.environ)
        engine = InferenceSettings.from_env(settings.environ)
        assert engine.cache_dir == Path.home() / ".cache" / "ledgerchat" / "models"


class TestDocs:
    def test_configuration_doc_is_generated_from_the_models(self) -> None:
        """docs/configuration.md is exactly what `python -m web.config_docs` writes; after a
        settings change, regenerate it."""
        committed = config_docs.DOC_PATH.read_text(encoding="utf-8")
        assert committed == config_docs.render(), "run: python -m web.config_docs"

    def test_every_variable_is_documented(self) -> None:
        """Every field of every settings model has its variable, default and docstring."""
        text = config_docs.render()
        for cls in ALL_MODELS:
            for name, info in cls.model_fields.items():
                assert f"`{env_name(cls, name)}`" in text
                assert info.description, f"{cls.__name__}.{name} has no docstring"
