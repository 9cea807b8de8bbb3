"""GET /api/history: one item per chat reply (its hold's events folded together), top-up or
refund, newest first; the raw events stay on /api/transactions."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.web.web_testing import chat, signed_in

pytestmark = pytest.mark.slow


async def items(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> Any:
    response = await client.get("/api/history", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def account_of(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    return str((await client.get("/api/me", headers=headers)).json()["account_id"])


class TestGroupedHistory:
    async def test_a_reply_is_one_item_with_its_net_cost(self, server):
        """hold_placed + hold_captured (with the released rest) read as one reply item whose
        amount is the cost; the raw events are unchanged on /api/transactions."""
        async with server.client() as client:
            headers = await signed_in(client, "grouped")
            status, events, _ = await chat(
                client, headers, "Hello", sampling={"max_tokens": 8, "temperature": 0}
            )
            assert status == 200
            done = events[-1].data
            page = await items(client, headers)
            assert page["next_cursor"] is None
            reply, grant = page["items"]
            assert reply["kind"] == "reply" and reply["status"] == "billed"
            assert reply["amount"] == -done["cost_credits"]
            assert reply["held"] == 0
            assert reply["model"] == done["model_answered"]
            assert reply["prompt_tokens"] == done["prompt_tokens"]
            assert reply["completion_tokens"] == done["completion_tokens"]
            assert reply["price_version"] == done["price_version"]
            assert reply["balance_after"] == done["balance"]["posted"]
            assert grant["kind"] == "top_up" and grant["amount"] > 0
            assert grant["status"] == "posted"
            raw = (await client.get("/api/transactions", headers=headers)).json()
            assert [row["type"] for row in raw["transactions"]] == [
                "hold_captured",
                "hold_placed",
                "credits_added",
            ]
            held = raw["transactions"][1]["amount"]
            assert reply["released"] == held - done["cost_credits"]

    async def test_an_open_hold_is_pending_then_released_is_not_billed(self, server):
        """While a hold is open its reply is one pending item with the held amount and no
        posted change; released in full it is one item, not billed, with the reason."""
        ledger = server.services.ledger
        async with server.client() as client:
            headers = await signed_in(client, "pending")
            account = await account_of(client, headers)
            hold = await ledger.place_hold(
                account, 7, ttl_s=600, purpose="chat", reference="req-1", idempotency_key="h-1"
            )
            pending = (await items(client, headers))["items"]
            assert [item["status"] for item in pending] == ["pending", "posted"]
            assert pending[0]["kind"] == "reply"
            assert pending[0]["held"] == 7 and pending[0]["amount"] == 0
            assert pending[0]["request_id"] == "req-1"
            assert pending[0]["hold_id"] == hold.hold
            await ledger.release_hold(account, hold.hold, reason="failed", idempotency_key="r-1")
            released = (await items(client, headers))["items"]
            assert [item["status"] for item in released] == ["not_billed", "posted"]
            assert released[0]["amount"] == 0 and released[0]["released"] == 7
            assert released[0]["reason"] == "failed"
            assert released[0]["hold_id"] == hold.hold

    async def test_pages_cover_every_item_once(self, server):
        """Small pages, whose boundaries fall between a hold and its resolution, list the
        same items as one big page, each once."""
        ledger = server.services.ledger
        async with server.client() as client:
            headers = await signed_in(client, "paging")
            account = await account_of(client, headers)
            for number in range(4):
                hold = await ledger.place_hold(
                    account,
                    3,
                    ttl_s=600,
                    purpose="chat",
                    reference=f"req-{number}",
                    idempotency_key=f"h-{number}",
                )
                await ledger.capture_hold(account, hold.hold, 2, idempotency_key=f"c-{number}")
                await ledger.add_credits(account, 5, source="admin", idempotency_key=f"a-{number}")
            await ledger.place_hold(
                account, 4, ttl_s=600, purpose="chat", reference="req-open", idempotency_key="open"
            )
            everything = (await items(client, headers, limit=200))["items"]
            assert [item["status"] for item in everything] == (
                ["pending"] + ["posted", "billed"] * 4 + ["posted"]
            )
            collected: list[str] = []
            cursor = None
            for _ in range(len(everything)):
                more = {} if cursor is None else {"cursor": cursor}
                page = await items(client, headers, limit=2, **more)
                collected += [item["event_id"] for item in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert collected == [item["event_id"] for item in everything]

    async def test_bad_limit_and_cursor_are_refused(self, server):
        async with server.client() as client:
            headers = await signed_in(client, "badpage")
            assert (await client.get("/api/history?limit=0", headers=headers)).status_code == 400
            bad = await client.get("/api/history?cursor=nope", headers=headers)
            assert bad.status_code == 422, bad.text
            assert (await client.get("/api/history")).status_code == 401
