"""Billing rules of chat through HTTP: 402 before any generation, partial capture on
disconnect, full release on engine failure, idempotent retries, shutdown."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from tests.web.conftest import TINY_BROKEN, TINY_CAP
from tests.web.web_testing import chat, signed_in, sse_events
from web.domain.chat.schemas import ChatDelta, SamplingOptions
from web.domain.chat.service import ChatInput

pytestmark = pytest.mark.slow


def tokens_generated() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "ledgerchat_tokens_generated":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


async def history(client, headers):
    return (await client.get("/api/transactions", headers=headers)).json()["transactions"]


class TestInsufficientCredits:
    async def test_402_with_balance_and_price_and_no_generation(self, make_server, make_settings):
        """When the worst-case cost exceeds the available credits the answer is 402 with the
        balance and the price, no hold is placed and no token is generated."""
        server = await make_server(make_settings(LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS="5"))
        await server.services.engine.load("tiny")
        async with server.client() as client:
            headers = await signed_in(client, "poor")
            generated_before = tokens_generated()
            status, events, body = await chat(client, headers, sampling={"max_tokens": 200})
            assert status == 402
            assert events == []
            details = body["error"]["details"]
            assert details["available"] == 5
            assert details["required"] > 5
            assert details["price"]["completion_credits_per_1k_tokens"] == 100
            assert tokens_generated() == generated_before
            assert [t["type"] for t in await history(client, headers)] == ["credits_added"]
            balance = (await client.get("/api/balance", headers=headers)).json()
            assert balance == {"posted": 5, "held": 0, "available": 5}


class TestDisconnect:
    async def test_disconnect_mid_stream_captures_only_what_was_generated(self, server):
        """Closing the connection after the first delta stops generation; the capture is the
        cost of the tokens generated (fewer than allowed) and the rest is released."""
        async with server.client() as client:
            headers = await signed_in(client, "quinn")
            async with client.stream(
                "POST",
                "/api/chat",
                json={"message": "go on", "sampling": {"max_tokens": TINY_CAP, "temperature": 0}},
                headers=headers,
            ) as response:
                assert response.status_code == 200
                seen = []
                async for event in sse_events(response):
                    seen.append(event)
                    if event.event == "delta":
                        break
            start = seen[0].data
            chat_service = server.services.chat
            assert await chat_service.wait_idle(10)
            await chat_service.wait_settlements(10)
            rows = await history(client, headers)
            capture = rows[0]
            assert capture["type"] == "hold_captured"
            assert 1 <= capture["completion_tokens"] < TINY_CAP
            assert -capture["amount"] < start["hold_credits"]
            balance = (await client.get("/api/balance", headers=headers)).json()
            assert balance["held"] == 0
            assert (
                balance["posted"]
                == server.services.settings.billing.signup_grant_credits + capture["amount"]
            )

    async def test_release_policy_on_disconnect(self, make_server, make_settings):
        """With partial capture switched off, a disconnect releases the whole hold."""
        server = await make_server(
            make_settings(LEDGERCHAT_BILLING_PARTIAL_CAPTURE_ON_DISCONNECT="false")
        )
        await server.services.engine.load("tiny")
        async with server.client() as client:
            headers = await signed_in(client, "rita")
            async with client.stream(
                "POST",
                "/api/chat",
                json={"message": "go on", "sampling": {"max_tokens": TINY_CAP, "temperature": 0}},
                headers=headers,
            ) as response:
                async for event in sse_events(response):
                    if event.event == "delta":
                        break
            assert await server.services.chat.wait_idle(10)
            await server.services.chat.wait_settlements(10)
            rows = await history(client, headers)
            assert rows[0]["type"] == "hold_released"
            assert rows[0]["reason"] == "aborted"
            balance = (await client.get("/api/balance", headers=headers)).json()
            assert balance["posted"] == server.services.settings.billing.signup_grant_credits


class TestEngineFailure:
    async def test_timeout_releases_the_hold_in_full_with_the_reason(
        self, make_server, make_settings
    ):
        """A generation that hits its deadline is not billed: the hold is released with
        reason `timeout`, visible in the history, and the final event says so."""
        server = await make_server(make_settings(LEDGERCHAT_INFERENCE_DEFAULT_DEADLINE_S="0.001"))
        await server.services.engine.load("tiny")
        async with server.client() as client:
            headers = await signed_in(client, "sam")
            status, events, _ = await chat(client, headers, sampling={"max_tokens": TINY_CAP})
            assert status == 200
            done = events[-1].data
            assert done["finish_reason"] == "timeout"
            assert done["cost_credits"] == 0
            assert done["settlement"] == "released"
            assert done["release_reason"] == "timeout"
            rows = await history(client, headers)
            assert [r["type"] for r in rows[:2]] == ["hold_released", "hold_placed"]
            assert rows[0]["reason"] == "timeout"
            assert (
                done["balance"]["posted"] == server.services.settings.billing.signup_grant_credits
            )

    async def test_model_that_fails_to_load_is_refused_before_any_hold(self, server):
        """A model whose weights are broken answers 503 and leaves the balance untouched."""
        async with server.client() as client:
            headers = await signed_in(client, "tess")
            status, _, body = await chat(client, headers, model=TINY_BROKEN)
            assert status == 503
            assert body["error"]["code"] in {"model_load_failed", "model_unavailable"}
            assert [r["type"] for r in await history(client, headers)] == ["credits_added"]


class TestIdempotency:
    async def test_retry_with_the_same_key_charges_once_and_replays(self, server):
        """A second request with the same Idempotency-Key returns the stored outcome (same
        request id, text and cost) and does not charge again."""
        async with server.client() as client:
            headers = await signed_in(client, "uma")
            keyed = {**headers, "Idempotency-Key": "msg-1"}
            _, first, _ = await chat(client, keyed, "Hello", sampling={"max_tokens": 8})
            balance_after_first = (await client.get("/api/balance", headers=headers)).json()
            _, second, _ = await chat(client, keyed, "Hello", sampling={"max_tokens": 8})
            assert second[-1].data["replayed"] is True
            assert second[-1].data["request_id"] == first[-1].data["request_id"]
            assert second[-1].data["cost_credits"] == first[-1].data["cost_credits"]

            def text(events):
                return "".join(e.data["text"] for e in events if e.event == "delta")

            assert text(second) == text(first)
            assert (await client.get("/api/balance", headers=headers)).json() == balance_after_first
            captures = [r for r in await history(client, headers) if r["type"] == "hold_captured"]
            assert len(captures) == 1

            status, _, body = await chat(client, keyed, "Something else")
            assert status == 422
            assert body["error"]["code"] == "idempotency_key_reused"


class TestShutdown:
    async def test_shutdown_refuses_new_chats(self, server):
        """Once shutdown begins new chats get 503 and nothing is held."""
        async with server.client() as client:
            headers = await signed_in(client, "vic")
            server.services.chat.begin_shutdown()
            status, _, body = await chat(client, headers)
            assert status == 503
            assert body["error"]["code"] == "shutting_down"


class TestNulCharacters:
    async def test_message_with_nul_is_refused_before_any_hold(self, server):
        """PostgreSQL text cannot store NUL: a message containing one is refused, naming the
        field (422, as every validation error), with no hold placed, instead of a failure
        after the reply was billed."""
        async with server.client() as client:
            headers = await signed_in(client, "nul")
            status, events, body = await chat(client, headers, "hello\x00there")
            assert status == 422, body
            assert events == []
            assert "NUL" in body["error"]["message"]
            assert [t["type"] for t in await history(client, headers)] == ["credits_added"]


class TestPromptTokenizedOnce:
    async def test_one_chat_encodes_its_message_once(self, server):
        """The prompt is tokenized once per chat: the hold's worst case and the generation use
        the same prepared request (the real tokenizer's encode is counted, not mocked)."""
        tokenizer = server.services.engine.loaded_model("tiny").tokenizer
        real_encode = tokenizer.encode_content
        encoded: list[str] = []

        def counting_encode(text: str) -> list[int]:
            encoded.append(text)
            return real_encode(text)

        tokenizer.encode_content = counting_encode
        async with server.client() as client:
            headers = await signed_in(client, "once")
            status, events, _ = await chat(
                client, headers, "count my tokens", sampling={"max_tokens": 4, "temperature": 0}
            )
        assert status == 200
        assert events[-1].event == "done"
        assert encoded == ["count my tokens"]


class TestStop:
    async def signed_in_identity(self, server, client, username):
        headers = await signed_in(client, username)
        token = headers["Authorization"].removeprefix("Bearer ")
        return headers, await server.services.accounts.identity_from_access_token(token)

    async def test_stop_mid_stream_returns_the_settled_partial_capture(self, server):
        """stop() during a stream ends the generation and returns the settled outcome: the
        tokens generated so far, billed as the ledger's capture says."""
        async with server.client() as client:
            headers, identity = await self.signed_in_identity(server, client, "stopper")
            prepared = await server.services.chat.prepare(
                identity,
                ChatInput(
                    message="go on", sampling=SamplingOptions(max_tokens=TINY_CAP, temperature=0)
                ),
            )
            events = prepared.events()
            async for event in events:
                if isinstance(event, ChatDelta):
                    break
            done = await prepared.stop()
            assert done is not None
            assert done.settlement == "partially_captured"
            assert 0 < done.completion_tokens < TINY_CAP
            assert 0 < done.cost_credits < done.hold_credits
            rows = await history(client, headers)
            assert rows[0]["type"] == "hold_captured"
            assert -rows[0]["amount"] == done.cost_credits
            assert done.balance == await server.services.billing.balance(identity)
            assert await prepared.stop() == done  # asking again gives the same outcome

    async def test_stop_before_streaming_releases_and_returns_nothing(self, server):
        """A prepared chat stopped before its events were read is released in full: no
        outcome, nothing charged, the hold gone."""
        async with server.client() as client:
            _, identity = await self.signed_in_identity(server, client, "early")
            prepared = await server.services.chat.prepare(identity, ChatInput(message="hi"))
            assert await prepared.stop() is None
            balance = await server.services.billing.balance(identity)
            assert balance.held == 0 and balance.available == balance.posted
