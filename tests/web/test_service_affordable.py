"""Replies that fit the balance: max_tokens lowered to what the credits pay for (exact, with
the test price 1 per message + 50 / 1k prompt + 100 / 1k completion tokens), 402 below one
message, and /v1 only when the request opts in."""

from __future__ import annotations

import pytest

from tests.web.web_testing import chat, signed_in
from web.domain.billing.prices import ModelPrice
from web.domain.chat.affordable import largest_affordable_completion

pytestmark = pytest.mark.slow

GRANT = 4


def cost(prompt_tokens: int, completion_tokens: int) -> int:
    """The test catalog's price, written out: rounding once on the total."""
    return 1 + -(-(50 * prompt_tokens + 100 * completion_tokens) // 1000)


class TestLargestAffordable:
    @pytest.mark.parametrize(
        ("rounding", "prompt", "maximum", "credits"),
        [("total", 17, 400, 3), ("total", 0, 30, 1), ("per_part", 33, 500, 7), ("total", 5, 2, 9)],
    )
    def test_is_the_largest_count_the_formula_affords(self, rounding, prompt, maximum, credits):
        """The answer costs at most the credits, one token more costs more (or the maximum was
        reached), and -1 when an empty reply already costs too much."""
        price = ModelPrice(1, 50, 100, "v", rounding)
        fits = largest_affordable_completion(price, prompt, maximum, credits)
        if price.cost_credits(prompt, 0) > credits:
            assert fits == -1
            return
        assert 0 <= fits <= maximum
        assert price.cost_credits(prompt, fits) <= credits
        assert fits == maximum or price.cost_credits(prompt, fits + 1) > credits


class TestShrink:
    async def test_a_reply_is_shortened_to_what_the_balance_pays(
        self, make_server, make_settings, database_url
    ):
        """4 credits cannot cover 30 tokens' worst case: 402 unless the request asks to
        shrink; then the chat is held for the largest count that fits (exactly
        floor((3000 - 50 x prompt) / 100) tokens), generates at most that, and says so in the
        final event."""
        server = await make_server(
            make_settings(database_url, LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS=str(GRANT))
        )
        await server.services.engine.load("tiny")
        async with server.client() as client:
            headers = await signed_in(client, "sam")
            refused, _, _ = await chat(client, headers, "hi", sampling={"max_tokens": 30})
            assert refused == 402  # not asked: as before
            status, events, body = await chat(
                client, headers, "hi", sampling={"max_tokens": 30}, shrink_to_affordable=True
            )
            assert status == 200, body
            done = events[-1].data
            prompt = done["prompt_tokens"]
            assert cost(prompt, 30) > GRANT  # the worst case did not fit
            expected = (1000 * (GRANT - 1) - 50 * prompt) // 100
            assert done["max_tokens_shrunk_to"] == expected
            assert done["hold_credits"] == cost(prompt, expected) <= GRANT
            assert cost(prompt, expected + 1) > GRANT
            assert done["completion_tokens"] <= expected

    async def test_below_one_message_is_402_as_before(
        self, make_server, make_settings, database_url
    ):
        """1 credit does not pay for any reply (1 per message + the prompt): 402
        insufficient_credits, nothing shortened."""
        server = await make_server(
            make_settings(database_url, LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS="1")
        )
        await server.services.engine.load("tiny")
        async with server.client() as client:
            headers = await signed_in(client, "tom")
            status, _, body = await chat(
                client, headers, "hi", sampling={"max_tokens": 30}, shrink_to_affordable=True
            )
            assert status == 402
            assert body["error"]["code"] == "insufficient_credits"

    async def test_v1_shrinks_only_when_asked(self, make_server, make_settings, database_url):
        """/v1 answers 402 for a max_tokens the balance cannot cover, unless the body says
        `x_ledgerchat: {shrink_to_affordable: true}`; then x_ledgerchat.max_tokens_shrunk_to
        names the lowered limit."""
        server = await make_server(
            make_settings(database_url, LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS=str(GRANT))
        )
        await server.services.engine.load("tiny")
        async with server.client() as client:
            headers = await signed_in(client, "uma")
            created = (await client.post("/api/keys", json={}, headers=headers)).json()
            key = {"Authorization": f"Bearer {created['secret']}"}
            body = {
                "model": "tiny",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 30,
            }
            plain = await client.post("/v1/chat/completions", json=body, headers=key)
            assert plain.status_code == 402
            opted = await client.post(
                "/v1/chat/completions",
                json={**body, "x_ledgerchat": {"shrink_to_affordable": True}},
                headers=key,
            )
            assert opted.status_code == 200, opted.text
            answer = opted.json()
            prompt = answer["usage"]["prompt_tokens"]
            expected = (1000 * (GRANT - 1) - 50 * prompt) // 100
            assert answer["x_ledgerchat"]["max_tokens_shrunk_to"] == expected
            assert answer["usage"]["completion_tokens"] <= expected


class TestFooter:
    def test_footer_says_the_reply_was_shortened(self):
        """The line under a shortened reply names the lowered token limit."""
        from web.ui.text import ReplyCost, reply_footer

        footer = reply_footer(
            ReplyCost(3, 10, 12, "tiny", "tiny", "captured", max_tokens_shrunk_to=12)
        )
        assert "shortened to 12 tokens" in footer
