"""The peer of `ledgerchat bench inference --peer-url URL`: any OpenAI-compatible server (vLLM,
llama-server, `ledgerchat engine serve`, ...) put through the same streaming load test as the
engine: the same prompts, greedy, the same token budget, 1 then N concurrent streams. Each
stream's rate counts the completion tokens the server reports in its final `usage` chunk
(else one per content chunk); its time to first token is from the request to the first chunk
with text. `ignore_eos` is sent (vLLM honours it, others ignore it) so every reply runs to the
budget."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import httpx

from inference.remote.wire import WireError, data_lines, parse_chunk

PEER_TIMEOUT_S = 600.0
"""At most this long for one streamed reply (the whole load test has no other deadline)."""


class PeerError(RuntimeError):
    """The peer cannot be measured (unreachable, serves no such model, answered an error)."""


@dataclass(frozen=True)
class PeerReply:
    completion_tokens: int
    first_token_ms: float | None


@dataclass(frozen=True)
class Peer:
    """A server to measure: its root URL (without /v1), the model it serves and headers."""

    root: str
    model: str
    headers: dict[str, str]


def peer_root(url: str) -> str:
    """The server's root from what an operator may pass (with or without /v1)."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def connect_peer(url: str, model: str | None, api_key_env: str | None) -> Peer:
    """The peer at `url`, its model checked against /v1/models (default: the first served).
    Blocking; raises PeerError."""
    root = peer_root(url)
    headers: dict[str, str] = {}
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise PeerError(f"--peer-api-key-env names {api_key_env}, which is not set")
        headers["Authorization"] = f"Bearer {key}"
    try:
        response = httpx.get(f"{root}/v1/models", headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise PeerError(f"{root}/v1/models is unreachable: {exc}") from None
    if response.status_code != 200:
        raise PeerError(f"{root}/v1/models answered HTTP {response.status_code}")
    served = [str(item.get("id")) for item in response.json().get("data", [])]
    if not served:
        raise PeerError(f"{root} serves no model")
    if model is not None and model not in served:
        raise PeerError(f"{root} does not serve {model!r} (it serves {', '.join(served)})")
    return Peer(root=root, model=model or served[0], headers=headers)


async def peer_reply(
    client: httpx.AsyncClient, peer: Peer, prompt: str, max_tokens: int
) -> PeerReply:
    """One greedy streamed chat completion of `prompt`."""
    body = {
        "model": peer.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    started = time.perf_counter()
    first_token_ms: float | None = None
    chunks_with_text = 0
    reported: int | None = None
    url = f"{peer.root}/v1/chat/completions"
    async with client.stream("POST", url, json=body, headers=peer.headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise PeerError(f"{url} answered HTTP {response.status_code}: {response.text[:300]}")
        try:
            async for payload in data_lines(response.aiter_lines()):
                chunk = parse_chunk(payload)
                if chunk is None:
                    break
                if chunk.text:
                    chunks_with_text += 1
                    if first_token_ms is None:
                        first_token_ms = (time.perf_counter() - started) * 1000.0
                if chunk.usage is not None:
                    reported = chunk.usage.completion_tokens
        except WireError as exc:
            raise PeerError(f"{url}: {exc}") from None
    tokens = reported if reported is not None else chunks_with_text
    return PeerReply(completion_tokens=tokens, first_token_ms=first_token_ms)


async def run_peer_streams(
    client: httpx.AsyncClient, peer: Peer, prompts: list[str], max_tokens: int
) -> tuple[list[PeerReply], float]:
    """`prompts` streamed concurrently: the replies and the wall time of the whole set."""
    started = time.perf_counter()
    replies = await asyncio.gather(
        *(peer_reply(client, peer, prompt, max_tokens) for prompt in prompts)
    )
    return list(replies), time.perf_counter() - started


def peer_client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(timeout=PEER_TIMEOUT_S, limits=limits)
