"""Contract of a remote model behind the billed API, against real upstream processes (`ledgerchat
engine serve` always, a real vLLM when configured: the `upstream` fixture runs each test on
every kind, `-m vllm` selects the vLLM runs): answers streamed and not are billed from the
upstream's own `usage`; Stop and disconnect close the upstream request at once (its /metrics
count the abort, its running slots go back to zero) and bill no more than was received; the
official `openai` client works against the billed /v1 in front of the remote model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.remote.front import (
    MAX_TOKENS_CAP,
    PRICE,
    REMOTE_MODEL,
    FrontFactory,
    api_key_for,
    balance,
    front_settings,
    history,
    make_front,
    remote_catalog,
    settled,
    wait_for,
)
from tests.remote.upstreams import Upstream
from tests.web.web_testing import chat, signed_in, sse_events

__all__ = ["make_front"]
pytestmark = [pytest.mark.slow, pytest.mark.live]
QUESTION = "Tell me about the sea"
REPLY_TOKENS = 12


def cost_of(prompt_tokens: int, completion_tokens: int) -> int:
    """The documented price formula, rounded up once on the total."""
    variable = (
        prompt_tokens * PRICE["prompt_credits_per_1k_tokens"]
        + completion_tokens * PRICE["completion_credits_per_1k_tokens"]
    )
    return math.ceil(PRICE["per_message_credits"] + variable / 1000)


async def upstream_usage(upstream: Upstream, content: str, max_tokens: int) -> dict[str, Any]:
    """The same greedy request straight to the upstream: the usage it reports itself."""
    async with httpx.AsyncClient(timeout=120, headers=upstream.headers) as client:
        response = await client.post(
            f"{upstream.v1_url}/chat/completions",
            json={
                "model": upstream.model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        )
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = response.json()["usage"]
    return usage


def settings_for(upstream: Upstream, tmp_path: Path) -> Any:
    catalog = remote_catalog(
        [upstream.base_url], upstream.model, tokenizer_dir=upstream.tokenizer_dir
    )
    return front_settings(tmp_path, catalog, api_key=upstream.api_key)


class TestBilledFromUpstreamUsage:
    async def test_streamed_chat_is_billed_from_the_upstream_usage(
        self, upstream: Upstream, make_front: FrontFactory, tmp_path: Path
    ) -> None:
        """/api/chat through a remote model: the final event's token counts are the ones the
        upstream reports for the same request, the capture costs exactly their price, the
        hold is gone, and the ledger does not mark the count as local."""
        expected = await upstream_usage(upstream, QUESTION, REPLY_TOKENS)
        server = await make_front(settings_for(upstream, tmp_path))
        async with server.client() as client:
            headers = await signed_in(client, "ursula")
            status, events, error = await chat(
                client,
                headers,
                QUESTION,
                sampling={"max_tokens": REPLY_TOKENS, "temperature": 0},
            )
            assert status == 200, error
            assert events[0].event == "start"
            assert events[0].data["model"] == REMOTE_MODEL
            done = events[-1].data
            assert events[-1].event == "done", done
            assert done["prompt_tokens"] == expected["prompt_tokens"]
            assert done["completion_tokens"] == expected["completion_tokens"]
            assert done["cost_credits"] == cost_of(
                expected["prompt_tokens"], expected["completion_tokens"]
            )
            assert done["settlement"] == "captured"
            await settled(server)
            rows = await history(client, headers)
            assert rows[0]["type"] == "hold_captured"
            assert rows[0]["completion_tokens"] == expected["completion_tokens"]
            assert rows[0]["token_count"] == "upstream"
            assert (await balance(client, headers))["held"] == 0

    async def test_non_streamed_v1_answer_is_billed_from_the_upstream_usage(
        self, upstream: Upstream, make_front: FrontFactory, tmp_path: Path
    ) -> None:
        """/v1/chat/completions without streaming: usage equals the upstream's, and the cost
        reported is what left the balance."""
        expected = await upstream_usage(upstream, QUESTION, REPLY_TOKENS)
        server = await make_front(settings_for(upstream, tmp_path))
        secret, headers = await api_key_for(server, "victor")
        async with server.client() as client:
            before = await balance(client, headers)
            response = await client.post(
                "/v1/chat/completions",
                json={
                    "model": REMOTE_MODEL,
                    "messages": [{"role": "user", "content": QUESTION}],
                    "max_tokens": REPLY_TOKENS,
                    "temperature": 0,
                },
                headers={"Authorization": f"Bearer {secret}"},
            )
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["usage"]["prompt_tokens"] == expected["prompt_tokens"]
            assert answer["usage"]["completion_tokens"] == expected["completion_tokens"]
            cost = answer["x_ledgerchat"]["cost_credits"]
            assert cost == cost_of(expected["prompt_tokens"], expected["completion_tokens"])
            await settled(server)
            after = await balance(client, headers)
            assert after["posted"] == before["posted"] - cost
            assert after["held"] == 0


class TestStopClosesTheUpstreamRequest:
    async def test_disconnect_aborts_upstream_and_bills_only_what_was_received(
        self, upstream: Upstream, make_front: FrontFactory, tmp_path: Path
    ) -> None:
        """A client that leaves after its first delta: the upstream counts one more aborted
        request and frees its slot; the capture bills at least the deltas the client got and
        less than the reply it was allowed, never the whole hold."""
        server = await make_front(settings_for(upstream, tmp_path))
        aborted_before = await _in_thread(upstream.aborted_requests)
        async with server.client() as client:
            headers = await signed_in(client, "wendy")
            deltas = 0
            async with client.stream(
                "POST",
                "/api/chat",
                json={
                    "message": "Write a very long story about the sea",
                    "sampling": {"max_tokens": MAX_TOKENS_CAP, "temperature": 0},
                },
                headers=headers,
            ) as response:
                assert response.status_code == 200
                async for event in sse_events(response):
                    if event.event == "start":
                        hold_credits = event.data["hold_credits"]
                    if event.event == "delta":
                        deltas += 1
                        break
            await settled(server)
            await wait_for(
                lambda: upstream.aborted_requests() >= aborted_before + 1,
                60,
                "the upstream counted the abort",
            )
            await wait_for(lambda: upstream.running_requests() == 0, 60, "upstream slots freed")
            rows = await history(client, headers)
            capture = rows[0]
            assert capture["type"] == "hold_captured", capture
            assert deltas <= capture["completion_tokens"] < MAX_TOKENS_CAP
            # vLLM reports usage in every chunk (continuous_usage_stats): its own count of
            # what was received; engine serve does not, so ledgerchat counted and says so.
            assert capture["token_count"] == ("upstream" if upstream.kind == "vllm" else "local")
            assert -capture["amount"] < hold_credits
            assert (await balance(client, headers))["held"] == 0


class TestOpenAIClient:
    async def test_openai_client_streams_from_the_remote_model_through_billed_v1(
        self, upstream: Upstream, make_front: FrontFactory, tmp_path: Path
    ) -> None:
        """The official client, unchanged: the remote model is listed, a streamed answer has
        text and a final usage chunk equal to the upstream's own count."""
        expected = await upstream_usage(upstream, QUESTION, REPLY_TOKENS)
        server = await make_front(settings_for(upstream, tmp_path))
        secret, headers = await api_key_for(server, "xena")
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=secret, max_retries=0)
        try:
            models = await client.models.list()
            assert REMOTE_MODEL in [model.id for model in models.data]
            stream = await client.chat.completions.create(
                model=REMOTE_MODEL,
                messages=[{"role": "user", "content": QUESTION}],
                max_tokens=REPLY_TOKENS,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            usage = None
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
            assert usage is not None
            assert usage.prompt_tokens == expected["prompt_tokens"]
            assert usage.completion_tokens == expected["completion_tokens"]
        finally:
            await client.close()
        await settled(server)
        async with server.client() as web:
            assert (await balance(web, headers))["held"] == 0


async def _in_thread(read: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(read)
