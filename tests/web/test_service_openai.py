"""The official `openai` client against /v1, unchanged: models, completions streaming and
not, billed through the same ledger as /api/chat."""

from __future__ import annotations

import openai
import pytest

from tests.web.web_testing import chat, signed_in

pytestmark = pytest.mark.slow


async def api_key(server) -> tuple[str, dict[str, str]]:
    async with server.client() as client:
        headers = await signed_in(client, "olga")
        created = (await client.post("/api/keys", json={"name": "sdk"}, headers=headers)).json()
    return created["secret"], headers


async def balance(server, headers) -> dict[str, int]:
    async with server.client() as client:
        return (await client.get("/api/balance", headers=headers)).json()


class TestOpenAIClient:
    async def test_models_and_non_streaming_completion(self, server):
        """`models.list` shows the model; a completion has text, usage, and its cost is what
        left the balance."""
        secret, headers = await api_key(server)
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=secret)
        models = await client.models.list()
        assert "tiny" in [m.id for m in models.data]
        before = await balance(server, headers)
        completion = await client.chat.completions.create(
            model="tiny",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say something"},
            ],
            max_tokens=10,
            temperature=0,
        )
        assert completion.choices[0].message.role == "assistant"
        assert completion.choices[0].finish_reason in {"stop", "length"}
        assert completion.usage is not None
        assert 1 <= completion.usage.completion_tokens <= 10
        cost = completion.model_extra["x_ledgerchat"]["cost_credits"]
        after = await balance(server, headers)
        assert after["posted"] == before["posted"] - cost
        assert after["held"] == 0
        await client.close()

    async def test_streaming_completion_has_usage_in_the_final_chunk(self, server):
        """Streaming yields content deltas, then a final chunk with usage; the streamed text
        equals what a non-streaming greedy call returns."""
        secret, _ = await api_key(server)
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=secret)
        messages = [{"role": "user", "content": "Count with me"}]
        stream = await client.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert usage is not None and usage.completion_tokens >= 1
        plain = await client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=8, temperature=0
        )
        assert "".join(parts) == plain.choices[0].message.content
        assert usage.completion_tokens == plain.usage.completion_tokens
        await client.close()

    async def test_stream_without_usage_has_no_usage_chunk_and_is_still_billed(self, server):
        """`stream_options.include_usage: false` drops the usage chunk, not the billing: the
        answer is captured and its cost leaves the balance as usual."""
        secret, headers = await api_key(server)
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=secret)
        before = await balance(server, headers)
        stream = await client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Count with me"}],
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": False},
        )
        chunks = [chunk async for chunk in stream]
        assert all(chunk.usage is None and chunk.choices for chunk in chunks)
        assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
        after = await balance(server, headers)
        assert after["held"] == 0 and after["posted"] < before["posted"]
        await client.close()

    async def test_errors_reach_the_client_as_typed_exceptions(self, server):
        """A wrong key is AuthenticationError; an unknown model is NotFoundError; not enough
        credits is a 402 APIStatusError."""
        secret, _ = await api_key(server)
        wrong = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="lc-wrong")
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=secret)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}]
            )
        await wrong.close()
        await client.close()


class TestChatRateLimit:
    async def test_api_and_v1_share_one_chat_budget(self, make_server, make_settings):
        """The per-user chat rate limit counts /api/chat and /v1/chat/completions together:
        past the budget both answer 429 with Retry-After, and nothing more is held."""
        server = await make_server(
            make_settings(LEDGERCHAT_RATE_LIMIT_CHAT_PER_USER_PER_MINUTE="2")
        )
        await server.services.engine.load("tiny")
        completion = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        }
        async with server.client() as client:
            headers = await signed_in(client, "limited")
            status, _, _ = await chat(client, headers, sampling={"max_tokens": 2})
            assert status == 200
            first = await client.post("/v1/chat/completions", json=completion, headers=headers)
            assert first.status_code == 200
            status, _, body = await chat(client, headers, sampling={"max_tokens": 2})
            assert status == 429 and body["error"]["code"] == "rate_limited"
            limited = await client.post("/v1/chat/completions", json=completion, headers=headers)
            assert limited.status_code == 429
            assert int(limited.headers["retry-after"]) >= 1
            assert (await client.get("/api/balance", headers=headers)).json()["held"] == 0


FALLS_BACK = {"LEDGERCHAT_MODEL_TINY_BROKEN__FALLBACK_MODEL_ID": "tiny"}
ASK_BROKEN = {"model": "tiny-broken", "messages": [{"role": "user", "content": "hi"}]}


class TestFallbacksOnV1:
    async def test_unavailable_model_is_503_model_unavailable_and_nothing_is_charged(
        self, make_server, make_settings
    ):
        """A model that cannot load is refused on /v1 (503 `model_unavailable`, OpenAI's
        error shape) even though its catalog fallback could answer: no silent swap, no
        charge, no hold left."""
        server = await make_server(make_settings(**FALLS_BACK))
        secret, headers = await api_key(server)
        before = await balance(server, headers)
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=secret, max_retries=0)
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(**ASK_BROKEN, max_tokens=2)
        assert raised.value.status_code == 503
        assert raised.value.code == "model_unavailable"
        assert "not installed on this server" in raised.value.message
        assert await balance(server, headers) == before
        async with server.client() as http:
            history = (await http.get("/api/transactions", headers=headers)).json()
        # The sign-up grant only: no hold was ever placed.
        assert {row["type"] for row in history["transactions"]} == {"credits_added"}
        await client.close()

    async def test_with_the_opt_in_the_fallback_answers_and_is_named(
        self, make_server, make_settings
    ):
        """With `fallback_on_v1`, the fallback answers with 200; `model` names it and
        `x_ledgerchat.fallback_from` the model asked for, streaming or not."""
        server = await make_server(
            make_settings(**FALLS_BACK, LEDGERCHAT_MODEL_TINY_BROKEN__FALLBACK_ON_V1="true")
        )
        secret, _ = await api_key(server)
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=secret, max_retries=0)
        completion = await client.chat.completions.create(**ASK_BROKEN, max_tokens=2, temperature=0)
        assert completion.model == "tiny"
        assert completion.model_extra["x_ledgerchat"]["fallback_from"] == "tiny-broken"
        stream = await client.chat.completions.create(
            **ASK_BROKEN, max_tokens=2, temperature=0, stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert {chunk.model for chunk in chunks} == {"tiny"}
        assert chunks[-1].model_extra["x_ledgerchat"]["fallback_from"] == "tiny-broken"
        plain = await client.chat.completions.create(
            model="tiny", messages=ASK_BROKEN["messages"], max_tokens=2
        )
        assert plain.model_extra["x_ledgerchat"]["fallback_from"] is None
        await client.close()
