"""The whole journey through the real ASGI app, a real database and the real engine:
register, log in, chat with streaming, and the charge equals the cost shown."""

from __future__ import annotations

import pytest

from tests.web.web_testing import PASSWORD, chat, login, register, signed_in
from web.settings import Settings

pytestmark = pytest.mark.slow


class TestJourney:
    async def test_register_login_chat_history_balance(
        self, make_server, make_settings, database_url
    ):
        """A new user gets the signup grant, chats, is charged exactly the cost shown in the
        final event, and sees the capture in their history with model and tokens."""
        settings: Settings = make_settings(database_url)
        server = await make_server(settings)
        async with server.client() as client:
            user = await register(client, "alice")
            assert user["username"] == "alice" and user["role"] == "user"
            tokens = await login(client, "alice")
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}

            me = (await client.get("/api/me", headers=headers)).json()
            assert me["id"] == user["id"]
            before = (await client.get("/api/balance", headers=headers)).json()
            assert before == {
                "posted": settings.billing.signup_grant_credits,
                "held": 0,
                "available": settings.billing.signup_grant_credits,
            }

            status, events, _ = await chat(
                client, headers, "Tell me a story", sampling={"max_tokens": 12, "temperature": 0}
            )
            assert status == 200
            kinds = [e.event for e in events]
            assert kinds[0] == "start" and kinds[-1] == "done"
            assert set(kinds[1:-1]) <= {"delta"}
            done = events[-1].data
            text = "".join(e.data["text"] for e in events if e.event == "delta")

            model = next(
                m
                for m in (await client.get("/api/models", headers=headers)).json()
                if m["id"] == done["model_answered"]
            )
            # Rounded up once, on the total (price rounding "total").
            thousandths = (
                done["prompt_tokens"] * model["prompt_credits_per_1k_tokens"]
                + done["completion_tokens"] * model["completion_credits_per_1k_tokens"]
            )
            expected = model["per_message_credits"] + -(-thousandths // 1000)
            assert done["cost_credits"] == expected
            assert done["price_version"] == model["price_version"]
            assert 1 <= done["completion_tokens"] <= 12
            assert done["settlement"] == "captured"
            after = (await client.get("/api/balance", headers=headers)).json()
            assert after["posted"] == before["posted"] - done["cost_credits"]
            assert after["held"] == 0
            assert done["balance"] == after

            history = (await client.get("/api/transactions", headers=headers)).json()
            capture = history["transactions"][0]
            assert capture["type"] == "hold_captured"
            assert capture["amount"] == -done["cost_credits"]
            assert capture["balance_after"] == after["posted"]
            assert capture["model"] == done["model_answered"]
            assert capture["completion_tokens"] == done["completion_tokens"]
            assert capture["prompt_tokens"] == done["prompt_tokens"]

            conversation = (
                await client.get(f"/api/conversations/{done['conversation_id']}", headers=headers)
            ).json()
            assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
            assert conversation["messages"][1]["content"] == text

            usage = (await client.get("/api/usage", headers=headers)).json()
            assert usage["total_credits"] == done["cost_credits"]
            assert usage["rows"][0]["completion_tokens"] == done["completion_tokens"]

    async def test_second_message_continues_the_conversation(self, server):
        """A message with a conversation id is appended to it and sent with its history
        (the prompt grows)."""
        async with server.client() as client:
            headers = await signed_in(client, "bob")
            _, first, _ = await chat(client, headers, "One", sampling={"max_tokens": 4})
            conversation_id = first[-1].data["conversation_id"]
            _, second, _ = await chat(
                client, headers, "Two", conversation_id=conversation_id, sampling={"max_tokens": 4}
            )
            assert second[-1].data["conversation_id"] == conversation_id
            assert second[-1].data["prompt_tokens"] > first[-1].data["prompt_tokens"]
            detail = (
                await client.get(f"/api/conversations/{conversation_id}", headers=headers)
            ).json()
            assert [m["content"] for m in detail["messages"] if m["role"] == "user"] == [
                "One",
                "Two",
            ]
        assert PASSWORD  # the helper's password satisfies the policy

    async def test_a_stored_reply_keeps_what_it_cost(self, server):
        """The conversation keeps each reply's request id, cost, tokens and settlement, so a
        reopened conversation can show the cost line the live reply had; user messages have
        none."""
        async with server.client() as client:
            headers = await signed_in(client, "carol")
            _, events, _ = await chat(client, headers, "Cost me", sampling={"max_tokens": 4})
            done = events[-1].data
            detail = (
                await client.get(f"/api/conversations/{done['conversation_id']}", headers=headers)
            ).json()
            user_message, reply = detail["messages"]
            assert user_message["usage"] is None
            assert reply["usage"] == {
                "request_id": done["request_id"],
                "cost_credits": done["cost_credits"],
                "prompt_tokens": done["prompt_tokens"],
                "completion_tokens": done["completion_tokens"],
                "model_requested": done["model_requested"],
                "settlement": done["settlement"],
                "release_reason": done["release_reason"],
            }
