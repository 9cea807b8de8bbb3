"""How a chat's hold is settled, through the real app on SQLite and PostgreSQL: once, when
generation ends, whatever the reader does (a stalled reader is charged before its hold
expires); at the price version the hold was placed under, recorded with the model on the
hold; a stop after the engine finished keeps its finish reason; a disconnect during the
shutdown grace is billed like any disconnect."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.web.conftest import TINY
from tests.web.web_testing import chat, hold_streams_open, signed_in, sse_events
from web.domain.billing.prices import ModelPrice, PriceCatalog
from web.domain.chat.schemas import ChatCompleted, ChatDelta, ChatStarted, SamplingOptions
from web.domain.chat.service import ChatInput

pytestmark = pytest.mark.slow


async def history(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await client.get("/api/transactions", headers=headers)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["transactions"]
    return rows


async def wait_for_row(
    client: httpx.AsyncClient, headers: dict[str, str], kind: str, timeout_s: float = 20
) -> dict[str, Any]:
    """The newest history row of type `kind`, once there is one (polled; slowly enough to
    stay within the per-address rate limit)."""
    async with asyncio.timeout(timeout_s):
        while True:
            for row in await history(client, headers):
                if row["type"] == kind:
                    return row
            await asyncio.sleep(0.2)


@pytest.fixture
async def db_server(make_server: Any, make_settings: Any, database_url: str) -> Any:
    server = await make_server(make_settings(database_url))
    await server.services.engine.load(TINY)
    return server


class TestHoldTimePrice:
    async def test_price_change_between_hold_and_settle_bills_the_hold_time_version(
        self, db_server: Any
    ) -> None:
        """The catalog's price of the model changes while the reply streams: the capture is
        the cost at the price the hold was placed under, recorded with that version."""
        server = db_server
        chat_service = server.services.chat
        held_price = chat_service._prices.get(TINY)
        dearer = ModelPrice(50, 500, 1000, "dearer-v9")
        resume, _ = hold_streams_open(server)
        async with server.client() as client:
            headers = await signed_in(client, "pricey")
            sampling = {"max_tokens": 8, "temperature": 0}
            running = asyncio.create_task(chat(client, headers, "hello", sampling=sampling))
            await wait_for_row(client, headers, "hold_placed")
            chat_service._prices = dataclasses.replace(
                chat_service._prices, prices={**chat_service._prices.prices, TINY: dearer}
            )
            assert isinstance(chat_service._prices, PriceCatalog)
            assert chat_service.find_model(TINY).price == dearer
            resume.set()
            status, events, _ = await running
            assert status == 200
            done = events[-1].data
            assert events[-1].event == "done", done
            capture = await wait_for_row(client, headers, "hold_captured")
        expected = held_price.cost_credits(done["prompt_tokens"], done["completion_tokens"])
        assert done["price_version"] == held_price.version
        assert done["cost_credits"] == expected
        assert (capture["price_version"], -capture["amount"]) == (held_price.version, expected)


class TestBillingTimeByPhase:
    async def test_chat_settled_splits_billing_ms_into_its_phases(self, db_server: Any) -> None:
        """The `chat_settled` line carries `billing_phases_ms`: the claim, budgets and hold
        before generation, the capture or release and the two record writes after it; each
        is a part of `billing_ms`, so together they never exceed it."""
        async with db_server.client() as client:
            headers = await signed_in(client, "phased")
            with capture_logs() as logs:
                status, _, _ = await chat(client, headers, "hello", sampling={"max_tokens": 4})
        assert status == 200
        settled = [line for line in logs if line["event"] == "chat_settled"]
        assert len(settled) == 1
        phases = settled[0]["billing_phases_ms"]
        assert set(phases) == {"claim", "budgets", "hold", "resolve", "exchange", "outcome"}
        assert all(value >= 0 for value in phases.values())
        # Each phase is rounded to a microsecond on its own.
        assert sum(phases.values()) <= settled[0]["billing_ms"] + 0.01


class TestHoldMetadata:
    async def test_hold_records_its_model_and_price_version(self, db_server: Any) -> None:
        """The hold_placed entry names the model and the price version it was placed under,
        the same version its capture records."""
        server = db_server
        price = server.services.chat.find_model(TINY).price
        async with server.client() as client:
            headers = await signed_in(client, "audited")
            status, events, _ = await chat(client, headers, "hi", sampling={"max_tokens": 4})
            assert status == 200 and events[-1].event == "done"
            rows = await history(client, headers)
        placed = next(row for row in rows if row["type"] == "hold_placed")
        captured = next(row for row in rows if row["type"] == "hold_captured")
        assert (placed["model"], placed["price_version"]) == (TINY, price.version)
        assert captured["price_version"] == placed["price_version"]


async def signed_in_identity(server: Any, client: httpx.AsyncClient, username: str) -> Any:
    headers = await signed_in(client, username)
    token = headers["Authorization"].removeprefix("Bearer ")
    return headers, await server.services.accounts.identity_from_access_token(token)


async def wait_generation_ended(server: Any, timeout_s: float = 20) -> None:
    """Poll the model's scheduler until no request waits or runs on it."""
    async with asyncio.timeout(timeout_s):
        while True:
            load = server.services.engine.load_snapshot(TINY)
            if load.waiting == 0 and load.running == 0:
                return
            await asyncio.sleep(0.02)


class TestStopAfterTheEngineFinished:
    async def test_keeps_the_engines_finish_reason_and_bills_the_whole_reply(
        self, db_server: Any
    ) -> None:
        """Stop pressed after the engine had finished (the reader was behind): the outcome
        keeps the engine's finish reason (`length` here, not `cancelled`) and is a full
        capture of every generated token, not a partial one."""
        server = db_server
        async with server.client() as client:
            headers, identity = await signed_in_identity(server, client, "late-stop")
            prepared = await server.services.chat.prepare(
                identity,
                ChatInput(
                    message="go on",
                    sampling=SamplingOptions(max_tokens=6, temperature=0, stop=[]),
                ),
            )
            events = prepared.events()
            async for event in events:
                if isinstance(event, ChatDelta):
                    break
            await wait_generation_ended(server)
            done = await prepared.stop()
            assert done is not None
            assert (done.finish_reason, done.settlement) == ("length", "captured")
            assert done.completion_tokens == 6
            price = server.services.chat.find_model(TINY).price
            assert done.cost_credits == price.cost_credits(done.prompt_tokens, 6)
            rows = await history(client, headers)
        assert [row["type"] for row in rows].count("hold_captured") == 1
        assert -rows[0]["amount"] == done.cost_credits


class TestDisconnectDuringShutdownGrace:
    async def test_is_billed_like_any_disconnect(self, db_server: Any) -> None:
        """Shutdown has begun (new chats refused, running ones finishing in the grace) when a
        client disconnects mid-reply: what was generated is captured, as for any disconnect;
        only a stream that the shutdown itself cuts is released."""
        server = db_server
        hold_streams_open(server)
        async with server.client() as client:
            headers = await signed_in(client, "leaver")
            body = {"message": "go on", "sampling": {"max_tokens": 40, "temperature": 0}}
            async with client.stream("POST", "/api/chat", json=body, headers=headers) as response:
                assert response.status_code == 200
                async for event in sse_events(response):
                    if event.event == "start":
                        break
                server.services.chat.begin_shutdown()
            assert await server.services.chat.wait_idle(20)
            await server.services.chat.wait_settlements(20)
            rows = await history(client, headers)
            balance = (await client.get("/api/balance", headers=headers)).json()
        assert rows[0]["type"] == "hold_captured", rows[0]
        assert -rows[0]["amount"] > 0
        grant = server.services.settings.billing.signup_grant_credits
        assert balance == {
            "posted": grant + rows[0]["amount"],
            "held": 0,
            "available": grant + rows[0]["amount"],
        }


class TestStalledReader:
    @pytest.mark.parametrize("then", ["reads on", "leaves"])
    async def test_a_reader_that_stops_pulling_is_charged_before_the_hold_expires(
        self, make_server: Any, make_settings: Any, database_url: str, then: str
    ) -> None:
        """A client reads the first event, then keeps the stream open and reads nothing for
        longer than the generation takes: the reply is captured for every generated token
        while the hold is live (not left to expire and be released for free). Reading on
        afterwards gives the whole reply and that same outcome; leaving settles nothing more.
        Either way the hold is resolved once."""
        hold_ttl_s = 60
        server = await make_server(
            make_settings(database_url, LEDGERCHAT_BILLING_HOLD_TTL_S=str(hold_ttl_s))
        )
        await server.services.engine.load(TINY)
        async with server.client() as client:
            headers, identity = await signed_in_identity(server, client, "stalled")
            prepared = await server.services.chat.prepare(
                identity,
                ChatInput(
                    message="go on",
                    sampling=SamplingOptions(max_tokens=12, temperature=0, stop=[]),
                ),
            )
            events = prepared.events()
            assert isinstance(await anext(events), ChatStarted)
            # The reader stalls here: `events` stays open and nothing is pulled.
            capture = await wait_for_row(client, headers, "hold_captured", timeout_s=hold_ttl_s / 2)
            assert capture["completion_tokens"] == 12
            if then == "reads on":
                rest = [event async for event in events]
                done = rest[-1]
                assert isinstance(done, ChatCompleted)
                assert "".join(e.text for e in rest if isinstance(e, ChatDelta))
            else:
                await events.aclose()
                done = await prepared.stop()
                assert done is not None
            assert (done.finish_reason, done.settlement) == ("length", "captured")
            assert done.cost_credits == -capture["amount"]
            assert await prepared.stop() == done
            await server.services.chat.wait_settlements(10)
            rows = await history(client, headers)
            balance = (await client.get("/api/balance", headers=headers)).json()
        types = [row["type"] for row in rows]
        assert types.count("hold_captured") == 1 and "hold_released" not in types
        assert balance["held"] == 0
