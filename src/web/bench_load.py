"""The client side of `ledgerchat bench service --workers`: bench users registered through the
load balancer, and a streaming load of U users, each keeping one POST /api/chat stream open
and starting the next when it ends, until a wall-clock duration has passed or a number of
chats has started. Every chat's SSE stream is read to its `done` event; what the run keeps of
each chat is its request id, its completion tokens and its client-side times."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

BENCH_PASSWORD = "bench password 1"
BENCH_PROMPT = "Write a short story about a lighthouse keeper and the sea."
REQUEST_TIMEOUT_S = 900.0
UPSTREAM_HEADER = "x-ledgerchat-upstream"


@dataclass
class ChatOutcome:
    """One chat as the client saw it."""

    status: int
    request_id: str | None = None
    completion_tokens: int = 0
    started_s: float = 0.0
    first_delta_s: float | None = None
    finished_s: float = 0.0
    error: str | None = None
    upstream: str = ""
    """The web process that answered (nginx's X-Ledgerchat-Upstream)."""


@dataclass
class LoadResult:
    users: int
    outcomes: list[ChatOutcome] = field(default_factory=list)
    started_s: float = 0.0
    finished_s: float = 0.0

    @property
    def completed(self) -> list[ChatOutcome]:
        return [o for o in self.outcomes if o.status == 200 and o.error is None]

    @property
    def failed(self) -> list[ChatOutcome]:
        return [o for o in self.outcomes if o.status != 200 or o.error is not None]

    @property
    def wall_s(self) -> float:
        return self.finished_s - self.started_s

    @property
    def completion_tokens(self) -> int:
        return sum(o.completion_tokens for o in self.completed)


async def bench_user(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    """Register `name` (open registration, its signup grant pays) and sign in: its headers."""
    registered = await client.post(
        "/api/auth/register",
        json={"username": name, "email": f"{name}@bench.invalid", "password": BENCH_PASSWORD},
    )
    if registered.status_code not in (200, 201):
        raise RuntimeError(f"registering {name}: HTTP {registered.status_code} {registered.text}")
    login = await client.post(
        "/api/auth/login", json={"username": name, "password": BENCH_PASSWORD}
    )
    if login.status_code != 200:
        raise RuntimeError(f"signing in {name}: HTTP {login.status_code} {login.text}")
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


async def stream_chat(
    client: httpx.AsyncClient, headers: dict[str, str], model_id: str, max_tokens: int
) -> ChatOutcome:
    """One greedy streamed chat read to its end."""
    body = {
        "message": BENCH_PROMPT,
        "model": model_id,
        "sampling": {"temperature": 0.0, "max_tokens": max_tokens},
    }
    outcome = ChatOutcome(status=0, started_s=time.perf_counter())
    try:
        async with client.stream("POST", "/api/chat", json=body, headers=headers) as response:
            outcome.status = response.status_code
            outcome.upstream = response.headers.get(UPSTREAM_HEADER, "").split(",")[-1].strip()
            if response.status_code != 200:
                await response.aread()
                outcome.error = response.text[:300]
                return outcome
            await _read_events(response, outcome)
    except httpx.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        outcome.finished_s = time.perf_counter()
    return outcome


async def _read_events(response: httpx.Response, outcome: ChatOutcome) -> None:
    event = ""
    done: dict[str, Any] | None = None
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            if event == "delta" and outcome.first_delta_s is None:
                outcome.first_delta_s = time.perf_counter()
            elif event == "done":
                done = json.loads(line[5:])
            elif event == "error":
                outcome.error = line[5:].strip()[:300]
    if done is None:
        outcome.error = outcome.error or "the stream ended without a done event"
        return
    outcome.request_id = str(done.get("request_id"))
    outcome.completion_tokens = int(done.get("completion_tokens") or 0)
    if done.get("error"):
        outcome.error = str(done["error"])[:300]


async def run_load(
    client: httpx.AsyncClient,
    users: list[dict[str, str]],
    model_id: str,
    max_tokens: int,
    *,
    duration_s: float | None,
    requests: int | None,
) -> LoadResult:
    """Each user chats back to back; new chats start until `duration_s` has passed since the
    start or `requests` chats have started (one of the two is given). The run ends when the
    last chat has ended."""
    assert (duration_s is None) != (requests is None)
    result = LoadResult(users=len(users), started_s=time.perf_counter())
    deadline = None if duration_s is None else result.started_s + duration_s
    started = 0

    def may_start() -> bool:
        nonlocal started
        if requests is not None:
            if started >= requests:
                return False
        elif time.perf_counter() >= deadline:  # type: ignore[operator]
            return False
        started += 1
        return True

    async def user_loop(headers: dict[str, str]) -> None:
        while may_start():
            result.outcomes.append(await stream_chat(client, headers, model_id, max_tokens))

    await asyncio.gather(*(user_loop(headers) for headers in users))
    result.finished_s = time.perf_counter()
    return result


def load_client(base_url: str, users: int) -> httpx.AsyncClient:
    """One connection per user (and a few spare), long reads: a stream may queue."""
    limits = httpx.Limits(max_connections=users + 8, max_keepalive_connections=users + 8)
    return httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits)
