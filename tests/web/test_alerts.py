"""Alerts: a crossing fires once (above to below, not every chat below), and the webhook
sender posts JSON to a real loopback receiver with bounded retries and back-off, without
waiting: a receiver that fails twice gets the event on the third try, one that is down costs
the poster nothing."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.web.web_testing import chat, free_port, signed_in
from web.domain.alerts.rules import (
    BudgetFigures,
    balance_crossed,
    budget_crossed,
    budget_crossing,
    budget_use_percent,
)
from web.domain.alerts.webhook import WebhookNotifier

DELIVERY_TIMEOUT_S = 30.0
GREEDY = {"max_tokens": 4, "temperature": 0}


class Receiver:
    """A loopback HTTP server that answers 500 to its first `failures` posts, then 204."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.received: list[Any] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                if receiver.attempts <= receiver.failures:
                    self.send_response(500)
                else:
                    receiver.received.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(failures=2)
    yield made
    made.stop()


class TestCrossing:
    def test_balance_fires_only_on_the_way_down_through_the_threshold(self):
        """From above to at/below fires; below to further below, or no threshold, does not."""
        assert balance_crossed(12, 10, 10)
        assert balance_crossed(12, 3, 10)
        assert not balance_crossed(10, 5, 10)
        assert not balance_crossed(9, 5, 10)
        assert not balance_crossed(5, 12, 10)
        assert not balance_crossed(12, 3, None)

    def test_budget_use_is_whole_percent_and_fires_once(self):
        """79% -> 80% fires for an 80% threshold; 80% -> 90% does not."""
        assert budget_use_percent(79, 100) == 79
        assert budget_use_percent(5, 0) == 100
        assert budget_crossed(79, 80, 100, 80)
        assert not budget_crossed(80, 90, 100, 80)
        assert not budget_crossed(10, 90, 100, None)

    def test_a_budget_crossing_names_the_budget_in_its_notice_and_event(self):
        """A reply of 5 credits taking a 100-credit day cap from 77 to 82 crosses 80%: the
        notice says which limit and how much, the event carries the figures; the same reply
        from 82 to 87 (or with no percent set) crosses nothing."""
        figures = BudgetFigures("user:3", "day", "self_cap", 100, 82, "your own day cap", None)
        crossing = budget_crossing(figures, 5, 80)
        assert crossing is not None
        assert crossing.subject == "user:3/day"
        assert "82% of your own day cap (82 of 100 credits)" in crossing.message
        assert crossing.event["used"] == 82 and crossing.event["threshold_percent"] == 80
        above = BudgetFigures("user:3", "day", "self_cap", 100, 87, "your own day cap", None)
        assert budget_crossing(above, 5, 80) is None
        assert budget_crossing(figures, 5, None) is None


class TestWebhook:
    async def test_fails_twice_then_delivers(self, receiver: Receiver):
        """Two 500s, then the third attempt is delivered; the post itself returned at once."""
        notifier = WebhookNotifier(receiver.url, attempts=5, backoff_s=0.05)
        notifier.start()
        try:
            started = time.monotonic()
            assert notifier.post({"type": "low_balance", "available": 3})
            assert time.monotonic() - started < 0.5
            await asyncio.wait_for(notifier.drained(), DELIVERY_TIMEOUT_S)
        finally:
            await notifier.close()
        assert receiver.attempts == 3
        assert receiver.received == [{"type": "low_balance", "available": 3}]
        assert (notifier.delivered, notifier.failed) == (1, 0)

    async def test_a_receiver_that_is_down_is_given_up_after_the_attempts(self):
        """Nothing listens: the event is tried `attempts` times, then counted failed."""
        notifier = WebhookNotifier(f"http://127.0.0.1:{free_port()}/", attempts=3, backoff_s=0.01)
        notifier.start()
        try:
            notifier.post({"type": "low_balance"})
            await asyncio.wait_for(notifier.drained(), DELIVERY_TIMEOUT_S)
        finally:
            await notifier.close()
        assert (notifier.delivered, notifier.failed) == (0, 1)

    async def test_the_queue_is_bounded(self):
        """With the sender not running, posts past the queue size are dropped, not waited for."""
        notifier = WebhookNotifier("http://127.0.0.1:9/", queue_size=2)
        assert notifier.post({"n": 1}) and notifier.post({"n": 2})
        assert not notifier.post({"n": 3})
        assert notifier.dropped == 1


class TestAlertsThroughTheApp:
    async def test_low_balance_crossing_notices_and_posts_once(
        self, make_server, make_settings, database_url, receiver: Receiver
    ):
        """A chat that takes the available balance to or below the user's threshold leaves a
        notice and posts one `low_balance` event (delivered after two failures); the next chat,
        already below, posts nothing more. SQLite and PostgreSQL."""
        settings = make_settings(database_url, LEDGERCHAT_BILLING_ALERTS_WEBHOOK_URL=receiver.url)
        server = await make_server(settings)
        server.services.webhook._backoff_s = 0.05
        async with server.client() as client:
            headers = await signed_in(client, "watcher")
            available = (await client.get("/api/balance", headers=headers)).json()["available"]
            threshold = available - 1
            put = await client.put(
                "/api/alerts", json={"low_balance_credits": threshold}, headers=headers
            )
            assert put.status_code == 200, put.text
            assert (await client.get("/api/alerts", headers=headers)).json()["notice"] is None
            for _ in range(2):
                status, _, error = await chat(client, headers, "Hi", sampling=GREEDY)
                assert status == 200, error
                await server.services.alerts.drained()
            await asyncio.wait_for(server.services.webhook.drained(), DELIVERY_TIMEOUT_S)
            shown = (await client.get("/api/alerts", headers=headers)).json()
            assert shown["low_balance_credits"] == threshold
            assert str(threshold) in shown["notice"]
        assert [event["type"] for event in receiver.received] == ["low_balance"]
        assert receiver.received[0]["username"] == "watcher"
        assert receiver.received[0]["threshold"] == threshold

    async def test_a_dead_webhook_does_not_touch_the_chat(self, make_server, make_settings):
        """With nothing listening at the webhook URL, a crossing chat still answers 200 at
        once and bills as usual."""
        dead = f"http://127.0.0.1:{free_port()}/hook"
        server = await make_server(make_settings(LEDGERCHAT_BILLING_ALERTS_WEBHOOK_URL=dead))
        async with server.client() as client:
            headers = await signed_in(client, "deadhook")
            available = (await client.get("/api/balance", headers=headers)).json()["available"]
            await client.put(
                "/api/alerts", json={"low_balance_credits": available - 1}, headers=headers
            )
            status, events, error = await chat(client, headers, "Hi", sampling=GREEDY)
            assert status == 200, error
            assert events[-1].data["balance"]["available"] < available
            await server.services.alerts.drained()
            assert "fell to" in (await client.get("/api/alerts", headers=headers)).json()["notice"]
