"""Budget-use alerts and the notices they leave, through the real app on SQLite and PostgreSQL:
a reply that takes an API key's day budget from below the user's percent to at or above it
leaves a notice and posts one `budget_use` event (through the same bounded, retrying sender as
low-balance alerts); the notice shows until dismissed or no longer true (the balance topped up
above the threshold, the percent raised)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.web.test_alerts import DELIVERY_TIMEOUT_S, Receiver
from tests.web.web_testing import PASSWORD, chat, login, signed_in

pytestmark = pytest.mark.slow
GREEDY = {"max_tokens": 4, "temperature": 0}


@pytest.fixture
def flaky_receiver() -> Iterator[Receiver]:
    """Fails the first two posts (500), then takes them."""
    made = Receiver(failures=2)
    yield made
    made.stop()


async def _settled(server: Any, client: Any, headers: dict[str, str]) -> dict[str, Any]:
    status, events, error = await chat(client, headers, "Hi", sampling=GREEDY)
    assert status == 200, error
    await server.services.alerts.drained()
    return dict(events[-1].data)


async def _notices(client: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    shown = await client.get("/api/alerts", headers=headers)
    assert shown.status_code == 200, shown.text
    return list(shown.json()["notices"])


class TestBudgetUseAlerts:
    async def test_a_key_budget_crossing_notices_and_posts_once(
        self, make_server, make_settings, database_url, flaky_receiver: Receiver
    ):
        """With a day budget of ten worst-case holds on a key and the percent set between the
        use after one and after two replies: the second reply crosses (one `budget_use` event,
        delivered after two failed tries, and a notice naming the key's budget); the third,
        already above, posts nothing; dismissing hides the notice and it stays hidden."""
        settings = make_settings(
            database_url, LEDGERCHAT_BILLING_ALERTS_WEBHOOK_URL=flaky_receiver.url
        )
        server = await make_server(settings)
        server.services.webhook._backoff_s = 0.05
        async with server.client() as client:
            session = await signed_in(client, "keyed")
            first = await _settled(server, client, session)
            cost, hold = first["cost_credits"], first["hold_credits"]
            limit = 10 * hold
            percent = 2 * cost * 100 // limit
            assert cost * 100 // limit < percent, (cost, hold)
            created = await client.post(
                "/api/keys",
                json={"name": "ci", "budget": {"period": "day", "period_credits": limit}},
                headers=session,
            )
            assert created.status_code == 201, created.text
            key_id = created.json()["key"]["id"]
            key = {"Authorization": f"Bearer {created.json()['secret']}"}
            put = await client.put(
                "/api/alerts", json={"budget_use_percent": percent}, headers=session
            )
            assert put.status_code == 200, put.text

            await _settled(server, client, key)
            assert await _notices(client, session) == []
            second = await _settled(server, client, key)
            (notice,) = await _notices(client, session)
            await _settled(server, client, key)
            await asyncio.wait_for(server.services.webhook.drained(), DELIVERY_TIMEOUT_S)
            assert len(await _notices(client, session)) == 1

            dismissed = await client.post(
                f"/api/alerts/notices/{notice['id']}/dismiss", headers=session
            )
            assert dismissed.status_code == 200, dismissed.text
            assert dismissed.json()["notices"] == []
            other = await signed_in(client, "someoneelse")
            foreign = await client.post(
                f"/api/alerts/notices/{notice['id']}/dismiss", headers=other
            )
            assert foreign.status_code == 404
        assert notice["kind"] == "budget_use"
        assert (notice["budget_id"], notice["period"]) == (f"key:{key_id}", "day")
        assert f"of {limit} credits" in notice["message"]
        (event,) = flaky_receiver.received
        assert flaky_receiver.attempts == 3
        assert event["type"] == "budget_use" and event["request_id"] == second["request_id"]
        assert (event["budget_id"], event["limit"], event["period"]) == (
            f"key:{key_id}",
            "key_period",
            "day",
        )
        assert event["limit_credits"] == limit and event["used"] == 2 * cost
        assert event["threshold_percent"] == percent <= event["used_percent"]
        assert event["username"] == "keyed" and event["resets_at"]

    async def test_notices_go_when_no_longer_true(self, make_server, make_settings, database_url):
        """A low-balance notice goes once a top-up lifts the balance above the threshold; a
        budget notice goes once the percent is raised above the use."""
        server = await make_server(make_settings(database_url))
        async with server.client() as client:
            await server.services.accounts.register(
                "root", "root@example.com", PASSWORD, role="admin"
            )
            admin = {"Authorization": f"Bearer {(await login(client, 'root'))['access_token']}"}
            user = await signed_in(client, "lowish")
            me = (await client.get("/api/me", headers=user)).json()
            available = (await client.get("/api/balance", headers=user)).json()["available"]
            cap = await client.put(
                "/api/me/cap", json={"credits": available, "period": "month"}, headers=user
            )
            assert cap.status_code == 200, cap.text
            thresholds = {"low_balance_credits": available - 1, "budget_use_percent": 1}
            assert (await client.put("/api/alerts", json=thresholds, headers=user)).is_success
            await _settled(server, client, user)
            assert {n["kind"] for n in await _notices(client, user)} == {
                "low_balance",
                "budget_use",
            }

            topped = await client.post(
                f"/api/admin/users/{me['id']}/credits",
                json={"amount": 50},
                headers={**admin, "Idempotency-Key": "lift"},
            )
            assert topped.status_code == 200, topped.text
            assert [n["kind"] for n in await _notices(client, user)] == ["budget_use"]
            raised = {**thresholds, "budget_use_percent": 100}
            assert (await client.put("/api/alerts", json=raised, headers=user)).is_success
            assert await _notices(client, user) == []
