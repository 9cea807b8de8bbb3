"""A billed ledgerchat in front of real upstreams, for the remote-backend contract tests: the
app in this process on a real uvicorn port (the web tests' harness), its catalog naming the
upstream URLs as one `remote` model, plus helpers to read the ledger's history and balance.

`front_settings(...)` writes that catalog; `RemoteFront` is the started server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web.web_testing import LiveServer, signed_in, start_server
from web.app import create_app
from web.settings import Settings, load_settings

REMOTE_MODEL = "remote-tiny"
KEY_ENV = "LEDGERCHAT_TEST_UPSTREAM_KEY"
MAX_TOKENS_CAP = 64
PRICE = {
    "per_message_credits": 1,
    "prompt_credits_per_1k_tokens": 50,
    "completion_credits_per_1k_tokens": 100,
}
FAST_HASHING = {
    "LEDGERCHAT_AUTH_ARGON2_TIME_COST": "1",
    "LEDGERCHAT_AUTH_ARGON2_MEMORY_COST_KIB": "1024",
}


def remote_catalog(
    base_urls: Sequence[str],
    upstream_model: str,
    *,
    tokenizer_dir: Path | None = None,
    read_timeout_s: float = 60.0,
    context_limit_tokens: int | None = None,
    use_upstream_tokenize: bool = True,
    api_key: bool = True,
    max_new_tokens_cap: int = MAX_TOKENS_CAP,
) -> str:
    """One remote model over `base_urls`, with its price."""
    urls = ", ".join(f'"{url}"' for url in base_urls)
    fields = [
        'kind = "remote"',
        f"base_urls = [{urls}]",
        f'model = "{upstream_model}"',
        "connect_timeout_s = 2",
        f"read_timeout_s = {read_timeout_s}",
        f"use_upstream_tokenize = {'true' if use_upstream_tokenize else 'false'}",
    ]
    if api_key:
        fields.append(f'api_key_env = "{KEY_ENV}"')
    if tokenizer_dir is not None:
        fields.append(f'tokenizer_path = "{tokenizer_dir}"')
    limit = f"context_limit_tokens = {context_limit_tokens}\n" if context_limit_tokens else ""
    price = "\n".join(f"{key} = {value}" for key, value in PRICE.items())
    source = ", ".join(fields)
    return f"""
[[models]]
id = "{REMOTE_MODEL}"
display_name = "remote test model"
source = {{ {source} }}
max_new_tokens_cap = {max_new_tokens_cap}
{limit}
[prices."{REMOTE_MODEL}"]
{price}
"""


def front_settings(
    tmp_path: Path, catalog_text: str, api_key: str = "", **overrides: str
) -> Settings:
    catalog = tmp_path / "front-catalog.toml"
    catalog.write_text(catalog_text, encoding="utf-8")
    environ = {
        "LEDGERCHAT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'front.db'}",
        "LEDGERCHAT_DATA_DIR": str(tmp_path / "data"),
        "LEDGERCHAT_CATALOG": str(catalog),
        "LEDGERCHAT_CHAT_DEFAULT_MODEL": REMOTE_MODEL,
        "LEDGERCHAT_CHAT_DEFAULT_MAX_TOKENS": "16",
        "LEDGERCHAT_INFERENCE_CACHE_DIR": str(tmp_path / "model-cache"),
        "LEDGERCHAT_AUTH_JWT_SECRET": "test-secret-that-is-long-enough-for-hs256",
        "LEDGERCHAT_LOG_LEVEL": "warning",
        "LEDGERCHAT_AUTH_SIGNUPS_PER_ADDRESS_PER_HOUR": "0",
        KEY_ENV: api_key,
        **FAST_HASHING,
        **overrides,
    }
    return load_settings(environ=environ, env_file=None)


FrontFactory = Callable[..., Any]


@pytest.fixture
async def make_front() -> AsyncIterator[FrontFactory]:
    """await make_front(settings) -> LiveServer (the billed app), stopped afterwards."""
    servers: list[LiveServer] = []

    async def factory(settings: Settings) -> LiveServer:
        server = await start_server(create_app(settings, mount_ui=False, configure_logs=False))
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop()


async def history(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The user's ledger history, newest first."""
    response = await client.get("/api/transactions", headers=headers)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["transactions"]
    return rows


async def balance(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, int]:
    response = await client.get("/api/balance", headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, int] = response.json()
    return result


async def settled(server: LiveServer) -> None:
    """Every stream of the front ended and its hold was resolved (generous timeouts)."""
    assert await server.services.chat.wait_idle(60)
    await server.services.chat.wait_settlements(60)


async def api_key_for(server: LiveServer, username: str) -> tuple[str, dict[str, str]]:
    """A ledgerchat API key (for /v1) of a new user, and that user's bearer headers."""
    async with server.client() as client:
        headers = await signed_in(client, username)
        created = await client.post("/api/keys", json={"name": "sdk"}, headers=headers)
        assert created.status_code == 201, created.text
    return created.json()["secret"], headers


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` off the event loop's critical path (generous timeout, short steps)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await asyncio.to_thread(condition):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s} s")
        await asyncio.sleep(0.1)
