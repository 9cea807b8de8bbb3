"""Fixtures for the web tests: the inference package's tiny random Gemma 3 behind the real
engine, service settings over a fresh database, and a live uvicorn server per test."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.inference.tiny_model import save_tiny_gemma
from tests.web.web_testing import LiveServer, start_server
from web.app import create_app
from web.settings import Settings, load_settings

TINY = "tiny"
TINY_BROKEN = "tiny-broken"
TINY_CAP = 400
TINY_CONTEXT = 512
PRICE = (
    "price = { per_message_credits = 1, prompt_credits_per_1k_tokens = 50, "
    "completion_credits_per_1k_tokens = 100 }"
)
# Cheap argon2 parameters keep registration fast in tests; production defaults are higher.
FAST_HASHING = {
    "LEDGERCHAT_AUTH_ARGON2_TIME_COST": "1",
    "LEDGERCHAT_AUTH_ARGON2_MEMORY_COST_KIB": "1024",
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma-web"))


@pytest.fixture
def web_catalog(tiny_model_dir: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")

    def entry(model_id: str, path: Path) -> str:
        return f"""
[[models]]
id = "{model_id}"
display_name = "{model_id} test model"
source = {{ kind = "hf_dir", path = "{path}" }}
dtype = "float32"
device = "cpu"
context_limit_tokens = {TINY_CONTEXT}
max_new_tokens_cap = {TINY_CAP}
{PRICE}
"""

    path = tmp_path / "catalog.toml"
    path.write_text(entry(TINY, tiny_model_dir) + entry(TINY_BROKEN, broken), encoding="utf-8")
    return path


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str, web_catalog: Path, tmp_path: Path
) -> str:
    """The environment of a `ledgerchat` command: only this test's LEDGERCHAT_* variables
    (a scratch SQLite database, the tiny catalog, fast hashing), run from an empty folder so
    no stray .env is read. Returns the database URL."""
    for name in list(os.environ):
        if name.startswith("LEDGERCHAT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEDGERCHAT_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("LEDGERCHAT_CATALOG", str(web_catalog))
    monkeypatch.setenv("LEDGERCHAT_INFERENCE_CACHE_DIR", str(tmp_path / "cache"))
    for name, value in FAST_HASHING.items():
        monkeypatch.setenv(name, value)
    return sqlite_url


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(sqlite_url: str, web_catalog: Path, tmp_path: Path) -> SettingsFactory:
    """make_settings(database_url=None, **LEDGERCHAT_* overrides) -> Settings."""

    def factory(database_url: str | None = None, **overrides: str) -> Settings:
        environ = {
            "LEDGERCHAT_DATABASE_URL": database_url or sqlite_url,
            "LEDGERCHAT_DATA_DIR": str(tmp_path / "data"),
            "LEDGERCHAT_CATALOG": str(web_catalog),
            "LEDGERCHAT_CHAT_DEFAULT_MODEL": TINY,
            "LEDGERCHAT_CHAT_DEFAULT_MAX_TOKENS": "16",
            "LEDGERCHAT_INFERENCE_CACHE_DIR": str(tmp_path / "model-cache"),
            "LEDGERCHAT_AUTH_JWT_SECRET": "test-secret-that-is-long-enough-for-hs256",
            "LEDGERCHAT_LOG_LEVEL": "warning",
            **FAST_HASHING,
            # Tests register many users from 127.0.0.1; the limit has its own tests.
            "LEDGERCHAT_AUTH_SIGNUPS_PER_ADDRESS_PER_HOUR": "0",
            **overrides,
        }
        return load_settings(environ=environ, env_file=None)

    return factory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


ServerFactory = Callable[..., Any]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """await make_server(settings, wait_for_model=True, **create_app kwargs) -> LiveServer;
    stopped afterwards. It returns once the default model's load at start has ended (as
    `serve` prints its ready line), since a chat sent while it loads is refused with
    `model_loading`; `wait_for_model=False` returns as soon as the port listens."""
    servers: list[LiveServer] = []

    async def factory(settings: Settings, wait_for_model: bool = True, **kwargs: Any) -> LiveServer:
        kwargs.setdefault("mount_ui", False)
        kwargs.setdefault("configure_logs", False)
        server = await start_server(create_app(settings, **kwargs))
        servers.append(server)
        if wait_for_model:
            await server.services.default_model_outcome()
        return server

    yield factory
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(make_server: ServerFactory, settings: Settings) -> LiveServer:
    live: LiveServer = await make_server(settings)
    await live.services.engine.load(TINY)
    return live


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    """Log configuration is global: a test that configures JSON logging must not leave its
    handler (bound to that test's captured stderr) behind."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
