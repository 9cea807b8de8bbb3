"""Contract of a remote model when its upstream fails, against real processes: an upstream that
was never started is refused with 503 (Retry-After) before any hold; one that accepts and
never answers ends as `engine_timeout`, never charged; one killed mid-stream releases the hold
in full with `engine_error`; with two upstream URLs and one killed, every chat goes to the
other, and /ready says which URL is down. (These kill or fake their upstream, so they run on
`ledgerchat engine serve` only.)"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.remote.front import (
    REMOTE_MODEL,
    FrontFactory,
    balance,
    front_settings,
    history,
    make_front,
    remote_catalog,
    settled,
)
from tests.remote.upstreams import ENGINE_MODEL, Upstream
from tests.web.web_testing import chat, free_port, signed_in, sse_events

__all__ = ["make_front"]
pytestmark = [pytest.mark.slow, pytest.mark.live]
CHAT_ENDPOINT = "/v1/chat/completions"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A real TCP server on loopback that accepts connections and never answers a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)  # the accept loop notices `stop` within this
    accepted: list[socket.socket] = []
    stop = False

    def accept() -> None:
        while not stop:
            with contextlib.suppress(OSError):  # a timeout, or the listener closed
                connection, _ = listener.accept()
                accepted.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop = True
    thread.join(5)
    listener.close()
    for connection in accepted:
        connection.close()


async def only_the_grant(server: Any, headers: dict[str, str]) -> None:
    """Nothing but the sign-up grant in the user's history, nothing held."""
    async with server.client() as client:
        rows = await history(client, headers)
        assert [row["type"] for row in rows] == ["credits_added"]
        assert (await balance(client, headers))["held"] == 0


class TestRefusedBeforeAnyHold:
    async def test_upstream_not_started_is_503_with_retry_after_and_no_hold(
        self, make_front: FrontFactory, tmp_path: Path, tiny_gemma_dir: Path
    ) -> None:
        """Nobody listens at the upstream URL: the chat is refused with 503
        `engine_unavailable` and Retry-After before any hold is placed."""
        url = f"http://127.0.0.1:{free_port()}"
        catalog = remote_catalog([url], ENGINE_MODEL, tokenizer_dir=tiny_gemma_dir)
        server = await make_front(front_settings(tmp_path, catalog, api_key="unused"))
        async with server.client() as client:
            headers = await signed_in(client, "yusuf")
            status, _, body = await chat(client, headers, "hello")
            assert status == 503, body
            assert body["error"]["code"] == "engine_unavailable"
            assert url in body["error"]["message"]
            response = await client.post("/api/chat", json={"message": "hi"}, headers=headers)
            assert response.status_code == 503
            assert int(response.headers["Retry-After"]) > 0
        await only_the_grant(server, headers)

    async def test_silent_upstream_is_engine_timeout_and_never_charged(
        self, make_front: FrontFactory, tmp_path: Path, tiny_gemma_dir: Path, silent_server: str
    ) -> None:
        """An upstream that accepts and never answers: after the read timeout the chat is
        answered 503 `engine_timeout`; nothing is charged or left held."""
        catalog = remote_catalog(
            [silent_server], ENGINE_MODEL, tokenizer_dir=tiny_gemma_dir, read_timeout_s=1
        )
        server = await make_front(front_settings(tmp_path, catalog, api_key="unused"))
        async with server.client() as client:
            headers = await signed_in(client, "zoe")
            status, _, body = await chat(client, headers, "hello")
            assert status == 503, body
            assert body["error"]["code"] == "engine_timeout"
        await only_the_grant(server, headers)


class TestUpstreamDiesMidStream:
    async def test_killed_upstream_releases_the_hold_with_engine_error(
        self,
        make_engine_upstream: Callable[..., Upstream],
        make_front: FrontFactory,
        tmp_path: Path,
    ) -> None:
        """The upstream is killed after the first delta: the stream ends with a `done` that
        says released / engine_error at no cost, and the ledger releases the whole hold with
        reason engine_error."""
        upstream = make_engine_upstream()
        catalog = remote_catalog(
            [upstream.base_url],
            upstream.model,
            tokenizer_dir=upstream.tokenizer_dir,
            max_new_tokens_cap=400,  # several seconds of decoding: the kill comes first
        )
        server = await make_front(front_settings(tmp_path, catalog, api_key=upstream.api_key))
        async with server.client() as client:
            headers = await signed_in(client, "abel")
            events = []
            async with client.stream(
                "POST",
                "/api/chat",
                json={"message": "A long story", "sampling": {"max_tokens": 400}},
                headers=headers,
            ) as response:
                assert response.status_code == 200
                async for event in sse_events(response):
                    events.append(event)
                    if event.event == "delta" and upstream.alive():
                        await asyncio.to_thread(upstream.kill)
            done = events[-1]
            assert done.event == "done", done
            assert done.data["settlement"] == "released", done.data
            assert done.data["release_reason"] == "engine_error", done.data
            assert done.data["cost_credits"] == 0, done.data
            await settled(server)
            rows = await history(client, headers)
            assert rows[0]["type"] == "hold_released", rows
            assert rows[0]["reason"] == "engine_error", rows
            grant = server.services.settings.billing.signup_grant_credits
            assert await balance(client, headers) == {
                "posted": grant,
                "held": 0,
                "available": grant,
            }


class TestFailover:
    async def test_two_urls_one_killed_traffic_moves_to_the_other(
        self,
        make_engine_upstream: Callable[..., Upstream],
        make_front: FrontFactory,
        tmp_path: Path,
    ) -> None:
        """Two upstream URLs for one model; one is killed: every later chat is answered (and
        billed) by the other, and /ready names the dead URL while staying ready."""
        shared_key = secrets.token_urlsafe(24)
        environ = {"LEDGERCHAT_ENGINE_API_KEY": shared_key}
        first = make_engine_upstream(extra_env=environ)
        second = make_engine_upstream(extra_env=environ)
        catalog = remote_catalog(
            [first.base_url, second.base_url], ENGINE_MODEL, tokenizer_dir=first.tokenizer_dir
        )
        server = await make_front(front_settings(tmp_path, catalog, api_key=shared_key))
        async with server.client() as client:
            headers = await signed_in(client, "bruno")
            status, _, error = await chat(client, headers, "warm up", sampling={"max_tokens": 4})
            assert status == 200, error
            await asyncio.to_thread(first.kill)
            answered_before = await asyncio.to_thread(answered, second)
            for index in range(3):
                status, events, error = await chat(
                    client, headers, f"question {index}", sampling={"max_tokens": 4}
                )
                assert status == 200, error
                assert events[-1].data["settlement"] == "captured"
            assert await asyncio.to_thread(answered, second) == answered_before + 3
            ready = (await client.get("/ready")).json()
            assert ready["ready"] is True, ready
            check = ready["checks"][f"remote_model:{REMOTE_MODEL}"]
            assert f"{first.base_url} unreachable" in check
            assert f"{second.base_url} reachable in" in check


def answered(upstream: Upstream) -> float:
    """Chat completions the upstream answered with 200."""
    return upstream.metric("ledgerchat_engine_requests_total", endpoint=CHAT_ENDPOINT, status="200")
