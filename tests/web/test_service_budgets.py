"""Budgets through the real app, on both databases: 50 concurrent chats against a key budget
that covers 5 never take more than it; 402 bodies name the limit, what is left and the reset;
of a self cap and an admin cap the lower binds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.web.web_testing import PASSWORD, chat, login, signed_in

pytestmark = pytest.mark.slow

CONCURRENT_CHATS = 50


def next_month_start() -> str:
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return nxt.isoformat()


async def budget_trace(server: Any, account_id: str, scope: str) -> list[int]:
    """What the scope's holds held plus took after each ledger event, oldest first."""
    entries = []
    cursor = None
    while True:
        page = await server.services.ledger.history(account_id, cursor=cursor, limit=200)
        entries.extend(page.entries)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    entries.sort(key=lambda e: e.sequence)
    scoped: set[str] = set()
    running, trace = 0, []
    for entry in entries:
        if (
            entry.event_type == "hold_placed"
            and scope in str(entry.metadata.get("budgets", "")).split()
        ):
            scoped.add(entry.event_id)
            running += entry.amount
        elif entry.hold_id in scoped and entry.event_type == "hold_captured":
            running -= entry.released_amount
        elif entry.hold_id in scoped and entry.event_type == "hold_released":
            running -= entry.amount
        trace.append(running)
    return trace


def limits(response: httpx.Response) -> dict[str, int]:
    """The limits a budgets answer lists: {limit name: credits}."""
    assert response.status_code == 200, response.text
    return {view["limit"]: view["limit_credits"] for view in response.json()["budgets"]}


async def make_admin(server: Any, client: httpx.AsyncClient) -> dict[str, str]:
    await server.services.accounts.register("root", "root@example.com", PASSWORD, role="admin")
    return {"Authorization": f"Bearer {(await login(client, 'root'))['access_token']}"}


class TestKeyBudget:
    async def test_fifty_concurrent_chats_never_overrun_a_key_budget(
        self, make_server, make_settings, database_url
    ):
        """A key whose monthly budget covers 5 worst-case holds: of 50 simultaneous chats the
        rest answer 402 budget_exceeded, and at no ledger event did the key's holds plus
        captures exceed the budget; nothing stays held and the audit is clean."""
        server = await make_server(
            make_settings(
                database_url,
                LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS="10000",
                # All 50 at once: only the budget may refuse them, not the per-user cap on
                # simultaneous chats (32 by default).
                LEDGERCHAT_CHAT_MAX_CONCURRENT_PER_USER="64",
            )
        )
        await server.services.engine.load("tiny")
        async with server.client() as client:
            headers = await signed_in(client, "kim")
            created = (await client.post("/api/keys", json={"name": "ci"}, headers=headers)).json()
            key_id = created["key"]["id"]
            key_headers = {"Authorization": f"Bearer {created['secret']}"}
            status, events, _ = await chat(
                client, key_headers, "question", sampling={"max_tokens": 30}
            )
            assert status == 200
            done = events[-1].data
            limit = done["cost_credits"] + 5 * done["hold_credits"]
            patched = await client.patch(
                f"/api/keys/{key_id}",
                json={"budget": {"period": "month", "period_credits": limit}},
                headers=headers,
            )
            assert patched.status_code == 200, patched.text
            results = await asyncio.gather(
                *(
                    chat(
                        client,
                        key_headers,
                        "question",
                        sampling={"max_tokens": 30},
                        shrink_to_affordable=False,
                    )
                    for _ in range(CONCURRENT_CHATS)
                )
            )
            statuses = [status for status, _, _ in results]
            assert set(statuses) <= {200, 402}, [b for s, _, b in results if s != 200]
            assert statuses.count(200) >= 5 and statuses.count(402) >= 1
            assert {b["error"]["code"] for s, _, b in results if s == 402} == {"budget_exceeded"}
            captured = done["cost_credits"] + sum(
                events[-1].data["cost_credits"] for s, events, _ in results if s == 200
            )
            assert captured <= limit
            budgets = (await client.get("/api/me/budgets", headers=headers)).json()["budgets"]
            (view,) = [b for b in budgets if b["key_id"] == key_id]
            assert view["used_credits"] == captured <= view["limit_credits"] == limit
            me = (await client.get("/api/me", headers=headers)).json()
            balance = (await client.get("/api/balance", headers=headers)).json()
            assert balance["held"] == 0
        trace = await budget_trace(server, me["account_id"], f"key:{key_id}")
        assert max(trace) <= limit
        report = await server.services.ledger.audit()
        assert report.clean, report.to_dict()["violations"]

    async def test_402_names_the_limit_what_is_left_and_the_reset(
        self, make_server, make_settings, database_url
    ):
        """A key created with a monthly budget below one worst-case hold: the chat answers
        402 with code budget_exceeded and details limit, left_credits, limit_credits,
        required and resets_at (the 1st of next month, 00:00 UTC); /v1 says the same in
        OpenAI's error shape."""
        server = await make_server(make_settings(database_url))
        await server.services.engine.load("tiny")
        async with server.client() as client:
            headers = await signed_in(client, "lee")
            created = await client.post(
                "/api/keys",
                json={"name": "small", "budget": {"period": "month", "period_credits": 2}},
                headers=headers,
            )
            assert created.status_code == 201, created.text
            key_headers = {"Authorization": f"Bearer {created.json()['secret']}"}
            status, _, body = await chat(
                client,
                key_headers,
                "hello",
                sampling={"max_tokens": 30},
                shrink_to_affordable=False,
            )
            assert status == 402
            error = body["error"]
            assert error["code"] == "budget_exceeded"
            details = error["details"]
            assert details["limit"] == "key_period"
            assert (details["limit_credits"], details["left_credits"]) == (2, 2)
            assert details["required"] > 2
            assert details["resets_at"] == next_month_start()
            v1 = await client.post(
                "/v1/chat/completions",
                json={
                    "model": "tiny",
                    "messages": [{"role": "user", "content": "hello"}],
                    "max_tokens": 30,
                },
                headers=key_headers,
            )
            assert v1.status_code == 402
            assert v1.json()["error"]["code"] == "budget_exceeded"
            assert "resets" in v1.json()["error"]["message"]


class TestUserCaps:
    async def test_the_lower_of_self_cap_and_admin_cap_binds(
        self, make_server, make_settings, database_url
    ):
        """With a self cap and an admin cap over the same month, a chat is refused by the
        lower one, whichever set it; clearing the admin cap leaves the self cap binding."""
        server = await make_server(make_settings(database_url))
        await server.services.engine.load("tiny")
        async with server.client() as client:
            admin = await make_admin(server, client)
            headers = await signed_in(client, "mia")
            me = (await client.get("/api/me", headers=headers)).json()
            ask = {"sampling": {"max_tokens": 30}, "shrink_to_affordable": False}
            own = await client.put("/api/me/cap", json={"credits": 4}, headers=headers)
            assert own.status_code == 200, own.text
            assert limits(own) == {"self_cap": 4}
            capped = await client.put(
                f"/api/admin/users/{me['id']}/cap", json={"credits": 3}, headers=admin
            )
            assert capped.status_code == 200, capped.text
            assert limits(capped) == {"self_cap": 4, "admin_cap": 3}
            status, _, body = await chat(client, headers, "hi", **ask)
            assert status == 402 and body["error"]["details"]["limit"] == "admin_cap"
            await client.put(
                f"/api/admin/users/{me['id']}/cap", json={"credits": 50}, headers=admin
            )
            status, _, body = await chat(client, headers, "hi", **ask)
            assert status == 402 and body["error"]["details"]["limit"] == "self_cap"
            assert body["error"]["details"]["left_credits"] == 4
            assert limits(await client.delete("/api/me/cap", headers=headers)) == {"admin_cap": 50}
            status, _, _ = await chat(client, headers, "hi", **ask)
            assert status == 200
            refused = await client.put(
                f"/api/admin/users/{me['id']}/cap", json={"credits": 3}, headers=headers
            )
            assert refused.status_code == 403
            cleared = await client.delete(f"/api/admin/users/{me['id']}/cap", headers=admin)
            assert limits(cleared) == {}
