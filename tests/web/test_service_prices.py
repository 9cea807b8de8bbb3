"""Prices through the real app: /api/models shows the rates, their rounding and a worked
example; a live chat is held at its worst case and captured with the formula of the price
version recorded with the hold (the test catalog's price: 1 + 50/1k prompt + 100/1k reply)."""

from __future__ import annotations

import pytest

from tests.web.web_testing import chat, signed_in
from web.domain.billing.prices import ModelPrice

pytestmark = pytest.mark.slow


def once(prompt_tokens: int, completion_tokens: int) -> int:
    """The test catalog's price rounded once on the total, in integers."""
    return 1 + -(-(prompt_tokens * 50 + completion_tokens * 100) // 1000)


class TestPricesLive:
    async def test_models_show_rates_rounding_and_worked_example(self, server):
        """Each model lists the catalog's rates, `rounding: total`, the new version and the
        cost of a 20-word question with a 100-token reply, billed by the same formula."""
        async with server.client() as client:
            headers = await signed_in(client, "pia")
            models = (await client.get("/api/models", headers=headers)).json()
        tiny = next(m for m in models if m["id"] == "tiny")
        assert tiny["price"] == {
            "per_message_credits": 1,
            "prompt_credits_per_1k_tokens": 50,
            "completion_credits_per_1k_tokens": 100,
            "rounding": "total",
            "version": ModelPrice.derive_version("tiny", 1, 50, 100, "total"),
            "example": {
                "question_words": 20,
                "prompt_tokens": 30,
                "reply_tokens": 100,
                "cost_credits": once(30, 100),
            },
        }
        assert tiny["price_version"] == tiny["price"]["version"]

    async def test_live_chat_is_held_at_worst_case_and_captured_rounding_once(self, server):
        """The hold is the formula at the prompt and every allowed reply token; the capture is
        the same formula at the actual counts, recorded with the new price version."""
        await server.services.engine.load("tiny")
        async with server.client() as client:
            headers = await signed_in(client, "quinn")
            status, events, _ = await chat(
                client, headers, "Hi", sampling={"max_tokens": 3, "temperature": 0}
            )
            assert status == 200
            done = events[-1].data
            history = (await client.get("/api/transactions", headers=headers)).json()
        prompt, completion = done["prompt_tokens"], done["completion_tokens"]
        assert done["cost_credits"] == once(prompt, completion)
        assert done["hold_credits"] == once(prompt, 3)
        assert done["hold_credits"] >= done["cost_credits"]
        version = ModelPrice.derive_version("tiny", 1, 50, 100, "total")
        assert done["price_version"] == version
        capture = history["transactions"][0]
        assert capture["type"] == "hold_captured"
        assert capture["amount"] == -done["cost_credits"]
        assert capture["price_version"] == version
