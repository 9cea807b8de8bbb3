"""Test helpers for the web service: a real uvicorn server around `create_app` on a free port,
an SSE parser, and shortcuts for registering and logging in over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from litestar import Litestar

from web.services import Services

PASSWORD = "correct horse 42"
SERVER_START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class LiveServer:
    app: Litestar
    base_url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=60.0, **kwargs)

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 60)


async def start_server(app: Litestar, config: uvicorn.Config | None = None) -> LiveServer:
    """`app` on a free loopback port; `config` (its port is replaced) defaults to the one below."""
    port = free_port()
    if config is None:
        # As `ledgerchat serve`: the app, not uvicorn, decides whom X-Forwarded-For is believed.
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, lifespan="on", proxy_headers=False
        )
    config.host, config.port = "127.0.0.1", port
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(SERVER_START_TIMEOUT_S):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server exited during start")
            await asyncio.sleep(0.02)
    return LiveServer(app=app, base_url=f"http://127.0.0.1:{port}", server=server, task=task)


@dataclasses.dataclass
class SseEvent:
    event: str
    data: Any


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """Parse `event:`/`data:` blocks from a streaming response."""
    event = "message"
    data_lines: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data_lines:
                text = "\n".join(data_lines)
                yield SseEvent(event, text if text == "[DONE]" else json.loads(text))
            event, data_lines = "message", []
            continue
        if line.startswith("event:"):
            event = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data_lines.append(line[len("data:") :].strip())


async def register(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> Any:
    response = await client.post(
        "/api/auth/register",
        json={"username": username, "email": f"{username}@example.com", "password": password},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> Any:
    response = await client.post(
        "/api/auth/login", json={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def signed_in(client: httpx.AsyncClient, username: str) -> dict[str, str]:
    """Register and log in; returns the Authorization header."""
    await register(client, username)
    tokens = await login(client, username)
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def chat(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    message: str = "Hello there",
    **body: Any,
) -> tuple[int, list[SseEvent], Any]:
    """POST /api/chat and read the whole stream; returns status, events, error body."""
    async with client.stream(
        "POST", "/api/chat", json={"message": message, **body}, headers=headers
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, [], response.json()
        return 200, [event async for event in sse_events(response)], None


def hold_streams_open(server: Any) -> tuple[asyncio.Event, list[str]]:
    """Each stream stops after its first event until `resume` is set (then it runs on), or
    until the engine is asked to cancel it (then it ends `cancelled`, as the engine's would)."""
    engine = server.services.engine
    real_stream, resume, cancelled = engine.stream, asyncio.Event(), []
    cut = asyncio.Event()

    async def stream(request: Any) -> Any:
        real = real_stream(request)
        yield await anext(real)
        waits = [asyncio.ensure_future(resume.wait()), asyncio.ensure_future(cut.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        if cut.is_set():
            await real.aclose()
            # However far the tiny model got, the engine ends a cancelled request `cancelled`.
            yield dataclasses.replace(real.finished, finish_reason="cancelled")
            return
        async for event in real:
            yield event

    def cancel(request_id: str) -> bool:
        cancelled.append(request_id)
        cut.set()
        return True

    engine.stream, engine.cancel = stream, cancel
    return resume, cancelled


def requests_counted(metrics: str, route: str, status: str) -> float:
    """Requests a /metrics exposition counts for this route and status (all methods)."""
    total = 0.0
    for line in metrics.splitlines():
        if (
            line.startswith("ledgerchat_http_request_duration_seconds_count{")
            and f'route="{route}"' in line
            and f'status="{status}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total
