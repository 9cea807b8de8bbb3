"""Client side of the multi-process tests: users registered through nginx, chats whose SSE
stream is read to the end, and which web process answered each (nginx's
X-Ledgerchat-Upstream header)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.multiproc.cluster import UPSTREAM_HEADER, Cluster
from tests.web.web_testing import SseEvent, signed_in, sse_events


@dataclass
class ChatResult:
    status: int
    upstream: str
    events: list[SseEvent] = field(default_factory=list)
    error: Any = None

    @property
    def done(self) -> dict[str, Any] | None:
        finals = [event.data for event in self.events if event.event == "done"]
        return finals[-1] if finals else None


def answered_by(response: httpx.Response) -> str:
    """The process that answered: the last of nginx's `$upstream_addr` list (earlier entries
    are processes it tried first and could not reach)."""
    return response.headers.get(UPSTREAM_HEADER, "").split(",")[-1].strip()


async def users(client: httpx.AsyncClient, names: list[str]) -> dict[str, dict[str, str]]:
    """Register and sign in each name (one after another: argon2 is the slow part)."""
    return {name: await signed_in(client, name) for name in names}


async def chat(
    client: httpx.AsyncClient, headers: dict[str, str], message: str = "Hello there"
) -> ChatResult:
    async with client.stream(
        "POST", "/api/chat", json={"message": message}, headers=headers
    ) as response:
        upstream = answered_by(response)
        if response.status_code != 200:
            await response.aread()
            return ChatResult(response.status_code, upstream, error=response.json())
        events = [event async for event in sse_events(response)]
        return ChatResult(200, upstream, events)


async def balance(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, int]:
    response = await client.get("/api/balance", headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, int] = response.json()
    return result


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """`ledgerchat ARGS --db <the cluster's database>`, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "web.cli", *args, "--db", cluster.database_url],
        env=cluster.environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def audit(cluster: Cluster) -> subprocess.CompletedProcess[str]:
    """`ledgerchat audit` against the cluster's database."""
    return cli(cluster, "audit")
