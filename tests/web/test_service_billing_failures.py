"""The billed chat flow under failure: an outcome is stored (and a retry replays it) whatever
fails after the ledger moved credit; a key is freed only when the ledger shows no credit moved;
a client that leaves early holds nothing; /v1 reports failures as errors and bills only what
was generated. Real app, real database, the tiny model."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from ledger.errors import LedgerBusy
from tests.web.conftest import TINY, TINY_CAP
from tests.web.web_testing import chat, hold_streams_open, signed_in, sse_events
from web import metrics
from web.domain.chat import claims
from web.tables import ChatRequestRow


async def history(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await client.get("/api/transactions", headers=headers)
    transactions: list[dict[str, Any]] = response.json()["transactions"]
    return transactions


def types_of(rows: list[dict[str, Any]]) -> list[str]:
    return [row["type"] for row in rows]


async def wait_no_hold(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            balance: dict[str, Any] = (await client.get("/api/balance", headers=headers)).json()
            if balance["held"] == 0:
                return balance
            await asyncio.sleep(0.05)


async def wait_hold_resolved(
    client: httpx.AsyncClient, headers: dict[str, str], timeout_s: float = 10
) -> list[dict[str, Any]]:
    """The history once a hold has been placed and resolved (captured or released)."""
    async with asyncio.timeout(timeout_s):
        while True:
            rows = await history(client, headers)
            if {"hold_captured", "hold_released"} & set(types_of(rows)):
                return rows
            await asyncio.sleep(0.05)


def slow_first_prepare(server: Any, delay_s: float) -> None:
    """The first prepare takes delay_s (as a lazy model load does); later ones are prompt."""
    engine = server.services.engine
    real_prepare = engine.prepare
    calls: list[int] = []

    async def prepare(request: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(delay_s)
        return await real_prepare(request)

    engine.prepare = prepare


def slow_decode(loaded: Any, per_step_s: float) -> None:
    """Each forward pass of the model takes per_step_s more (a big model on a busy host).
    It slows generation itself, in the scheduler's thread, not just the reading of events."""
    loaded.model.register_forward_pre_hook(lambda module, args: time.sleep(per_step_s))


class TestOutcomeStoredAfterCapture:
    async def test_conversation_deleted_mid_stream_is_charged_once_and_replayed(self, server):
        """The conversation is deleted while its answer streams: the answer is still captured
        and its outcome stored, so a retry with the same key replays it (no 409, no second
        charge)."""
        async with server.client() as client:
            headers = await signed_in(client, "delme")
            keyed = {**headers, "Idempotency-Key": "deleted-1"}
            body = {"message": "go on", "sampling": {"max_tokens": 16, "temperature": 0}}
            events = []
            async with client.stream("POST", "/api/chat", json=body, headers=keyed) as response:
                assert response.status_code == 200
                async for event in sse_events(response):
                    events.append(event)
                    if event.event == "start":
                        conversation_id = event.data["conversation_id"]
                        deleted = await client.delete(
                            f"/api/conversations/{conversation_id}", headers=headers
                        )
                        assert deleted.status_code == 204
            done = events[-1]
            assert done.event == "done", done
            assert done.data["settlement"] == "captured"
            status, replay, _ = await chat(client, keyed, "go on", sampling=body["sampling"])
            assert status == 200
            assert replay[-1].data["replayed"] is True
            assert replay[-1].data["cost_credits"] == done.data["cost_credits"]
            assert types_of(await history(client, headers)).count("hold_captured") == 1

    async def test_capture_committed_then_ledger_busy_is_retried_with_its_key(self, server):
        """The ledger commits a capture but answers LedgerBusy (its documented timeout): the
        capture is retried with the same key (a replay, not a second charge), the outcome is
        stored, the retry of the request replays it, and the active-holds gauge is back."""
        ledger = server.services.ledger
        real_capture = ledger.capture_hold
        calls: list[int] = []

        async def capture_then_busy(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            receipt = await real_capture(*args, **kwargs)
            if len(calls) == 1:
                raise LedgerBusy("simulated: timed out waiting; the command committed")
            return receipt

        ledger.capture_hold = capture_then_busy
        holds_before = metrics.ACTIVE_HOLDS._value.get()
        async with server.client() as client:
            headers = await signed_in(client, "busy")
            keyed = {**headers, "Idempotency-Key": "busy-1"}
            status, events, _ = await chat(client, keyed, "hi", sampling={"max_tokens": 8})
            assert status == 200
            done = events[-1]
            assert done.event == "done", done
            assert done.data["settlement"] == "captured"
            assert len(calls) == 2
            status, replay, _ = await chat(client, keyed, "hi", sampling={"max_tokens": 8})
            assert status == 200
            assert replay[-1].data["replayed"] is True
            rows = await history(client, headers)
            assert types_of(rows).count("hold_captured") == 1
            balance = (await client.get("/api/balance", headers=headers)).json()
            assert balance["held"] == 0
            assert balance["posted"] == done.data["balance"]["posted"]
        assert metrics.ACTIVE_HOLDS._value.get() == holds_before

    async def test_stale_claim_after_a_capture_replays_the_ledger_outcome(
        self, make_server, make_settings
    ):
        """A process that died between capture and record leaves its claim 'started'. Past the
        hold TTL the retry asks the ledger, finds the capture and replays it instead of
        running (and charging) again."""
        # The TTL is long enough that the generation deadline (3/4 of it) is never reached
        # on a loaded machine; the claim is then dated back past it by hand.
        ttl_s = 30
        server = await make_server(make_settings(LEDGERCHAT_BILLING_HOLD_TTL_S=str(ttl_s)))
        await server.services.engine.load(TINY)
        sampling = {"max_tokens": 8, "temperature": 0}
        async with server.client() as client:
            headers = await signed_in(client, "stale")
            keyed = {**headers, "Idempotency-Key": "stale-1"}
            status, events, _ = await chat(client, keyed, "hi", sampling=sampling)
            assert status == 200
            done = events[-1].data
            assert done["settlement"] == "captured", done
            # The crash: the outcome never stored, the claim just older than the hold TTL (the
            # retry looks for its hold in the ledger within a TTL of the claim).
            past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=ttl_s + 1)
            async with server.services.chat._sessions() as session:
                await session.execute(
                    update(ChatRequestRow)
                    .where(ChatRequestRow.id == done["request_id"])
                    .values(status="started", outcome_json=None, created_at=past, updated_at=past)
                )
                await session.commit()
            status, replay, _ = await chat(client, keyed, "hi", sampling=sampling)
            assert status == 200
            recovered = replay[-1].data
            assert recovered["replayed"] is True
            assert recovered["request_id"] == done["request_id"]
            assert recovered["cost_credits"] == done["cost_credits"]
            assert recovered["completion_tokens"] == done["completion_tokens"]
            assert types_of(await history(client, headers)).count("hold_captured") == 1
            # Stored now: the next retry replays without asking the ledger.
            status, again, _ = await chat(client, keyed, "hi", sampling=sampling)
            assert status == 200 and again[-1].data["cost_credits"] == done["cost_credits"]


class TestReleaseFailsAfterEngineError:
    async def test_unreleased_hold_expires_then_the_key_runs_once(self, make_server, make_settings):
        """The engine fails and the ledger refuses the release too: the client gets an error
        (not a `done`), nothing is charged, the hold stays until the sweeper releases it at
        expiry, and then a retry with the same key runs as a new request, charged once."""
        # Long enough that, on a loaded 2-core machine, the first hold cannot expire before the
        # balance is read and the retry's generation deadline (a share of the TTL) is not hit;
        # 3 s failed there.
        ttl_s = 8
        server = await make_server(
            make_settings(
                LEDGERCHAT_BILLING_HOLD_TTL_S=str(ttl_s),
                LEDGERCHAT_BILLING_SWEEP_INTERVAL_S="0.2",
            )
        )
        loaded = await server.services.engine.load(TINY)

        def forward_fails(module: Any, args: Any) -> None:
            raise RuntimeError("simulated kernel failure")

        failing_forward = loaded.model.register_forward_pre_hook(forward_fails)
        ledger = server.services.ledger
        real_release = ledger.release_hold
        releases: list[int] = []

        async def release_busy(*args: Any, **kwargs: Any) -> Any:
            releases.append(1)
            raise LedgerBusy("simulated: the writer did not answer")

        ledger.release_hold = release_busy
        sampling = {"max_tokens": 8, "temperature": 0}
        async with server.client() as client:
            headers = await signed_in(client, "unreleased")
            keyed = {**headers, "Idempotency-Key": "unreleased-1"}
            status, events, _ = await chat(client, keyed, "hi", sampling=sampling)
            assert status == 200
            assert events[-1].event == "error", [e.event for e in events]
            assert events[-1].data["error"]["code"] == "ledger_busy"
            assert len(releases) >= 2  # LedgerBusy is retried before giving up
            balance = (await client.get("/api/balance", headers=headers)).json()
            assert balance["held"] > 0 and balance["posted"] == 100
            ledger.release_hold = real_release
            failing_forward.remove()
            # The sweeper releases the hold once it expires; nothing was charged.
            rows = await wait_hold_resolved(client, headers, timeout_s=ttl_s + 10)
            assert rows[0]["type"] == "hold_released" and rows[0]["reason"] == "expired"
            # Past the TTL the retry finds the expired hold: the key is free and runs anew.
            status, retried, _ = await chat(client, keyed, "hi", sampling=sampling)
            assert status == 200
            done = retried[-1]
            assert done.event == "done", done
            assert done.data["settlement"] == "captured" and done.data["replayed"] is False
            types = types_of(await history(client, headers))
            assert types.count("hold_placed") == 2 and types.count("hold_captured") == 1
            balance = (await client.get("/api/balance", headers=headers)).json()
            assert balance["held"] == 0
            assert balance["posted"] == 100 - done.data["cost_credits"]


class TestConversationCreateFailsAfterHold:
    async def test_hold_released_and_key_free_for_a_retry(self, server):
        """Storing the new conversation fails after the hold was placed and generation began:
        the request is an error, the hold is released in full at once and generation stops,
        and a retry with the same key runs (not 409, not a replay), charged once."""
        conversations = server.services.chat._conversations
        real_create = conversations.create
        calls: list[int] = []

        async def create_fails_once(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("simulated: the database went away")
            return await real_create(*args, **kwargs)

        conversations.create = create_fails_once
        sampling = {"max_tokens": 8, "temperature": 0}
        async with server.client() as client:
            headers = await signed_in(client, "noconv")
            keyed = {**headers, "Idempotency-Key": "noconv-1"}
            status, _, body = await chat(client, keyed, "hi", sampling=sampling)
            assert status == 500, body
            assert body["error"]["code"] == "internal_error"
            assert server.services.chat.active_streams == 0
            rows = await history(client, headers)
            assert types_of(rows)[:2] == ["hold_released", "hold_placed"]
            assert (await client.get("/api/balance", headers=headers)).json()["held"] == 0
            status, events, _ = await chat(client, keyed, "hi", sampling=sampling)
            assert status == 200
            done = events[-1]
            assert done.event == "done", done
            assert done.data["settlement"] == "captured" and done.data["replayed"] is False
            assert done.data["conversation_id"]
            assert types_of(await history(client, headers)).count("hold_captured") == 1


class TestClaimJudgedByItsHold:
    async def test_slow_prepare_keeps_its_claim_while_its_hold_is_live(
        self, make_server, make_settings, monkeypatch
    ):
        """Prepare took longer than the hold TTL (slow engine prepare) before placing the hold,
        so the claim stamps itself with the hold's start: a retry after the claim's age passed
        the TTL, while the hold is live, is 409, not a second generation.

        The hold is placed later than the ledger search window an unstamped claim implies
        (0.25 x TTL + TTL + clock slack after the claim), so only the stamp protects it: a
        claim that did not renew would be judged abandoned and the retry would run."""
        # TTL 4 s, slack 0.5 s: an unstamped claim's window ends at 1 + 4 + 0.5 = 5.5 s. The
        # claim is made at 0 s, the hold placed at ~6.5 s (expiring at ~10.5 s); the retry
        # comes at ~8.5 s: the claim is 8.5 s old (> TTL), its stamp 2 s old (< TTL), its
        # hold live. The first stream is held open until then.
        monkeypatch.setattr(claims, "CLOCK_SLACK_S", 0.5)
        server = await make_server(make_settings(LEDGERCHAT_BILLING_HOLD_TTL_S="4"))
        await server.services.engine.load(TINY)
        slow_first_prepare(server, 6.5)
        resume, _cancelled = hold_streams_open(server)
        async with server.client() as client:
            headers = await signed_in(client, "twice")
            keyed = {**headers, "Idempotency-Key": "same-key"}
            body = {"message": "tell me", "sampling": {"max_tokens": 40, "seed": 1, "stop": []}}
            first = asyncio.create_task(chat(client, keyed, **body))
            await wait_for_hold_placed(client, headers)
            await asyncio.sleep(2)
            # Only the status is read: a retry wrongly let through would stream (held open).
            async with client.stream("POST", "/api/chat", json=body, headers=keyed) as retry:
                if retry.status_code != 200:
                    await retry.aread()
            resume.set()
            assert retry.status_code == 409, retry.status_code
            assert retry.json()["error"]["code"] == "request_in_progress"
            status, events, _ = await first
            assert status == 200
            assert events[-1].event == "done"
            await server.services.chat.wait_settlements(5)
            rows = await history(client, headers)
            assert types_of(rows).count("hold_placed") == 1


async def wait_for_hold_placed(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    async with asyncio.timeout(30):
        while True:
            if "hold_placed" in types_of(await history(client, headers)):
                return
            await asyncio.sleep(0.1)


class TestEarlyDisconnect:
    @pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
    async def test_client_gone_before_the_stream_starts_holds_nothing(self, server, path):
        """The client gives up while prepare runs (slow engine prepare): the hold is resolved at
        once, not left for the TTL, and a retry with the same key is not 409."""
        slow_first_prepare(server, 0.8)
        if path == "/api/chat":
            body: dict[str, Any] = {"message": "go on", "sampling": {"max_tokens": 16}}
        else:
            body = {
                "model": TINY,
                "stream": True,
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "go on"}],
            }
        async with server.client() as client:
            headers = await signed_in(client, "early")
            keyed = {**headers, "Idempotency-Key": "early-1"}
            with pytest.raises(httpx.TimeoutException):
                async with httpx.AsyncClient(base_url=server.base_url, timeout=0.3) as impatient:
                    await impatient.post(path, json=body, headers=keyed)
            # The server places the hold once its slow prepare ends, then resolves it.
            rows = await wait_hold_resolved(client, headers)
            assert types_of(rows)[:2] == ["hold_released", "hold_placed"]
            assert (await wait_no_hold(client, headers))["held"] == 0
            retry = await client.post(path, json=body, headers=keyed)
            assert retry.status_code == 200, retry.text
            await server.services.chat.wait_settlements(5)
            assert server.services.chat.active_streams == 0
            assert (await wait_no_hold(client, headers))["held"] == 0


class TestOpenAIFailures:
    async def test_non_streaming_disconnect_stops_generation_and_bills_what_was_generated(
        self, make_server, make_settings
    ):
        """A non-streaming /v1 client that leaves mid-generation stops it: fewer tokens than
        allowed are generated and billed (before: the full answer ran and was charged)."""
        server = await make_server(make_settings(LEDGERCHAT_INFERENCE_DEFAULT_DEADLINE_S="120"))
        slow_decode(await server.services.engine.load(TINY), 0.02)
        async with server.client() as client:
            headers = await signed_in(client, "gone")
            body = {
                "model": TINY,
                "max_tokens": TINY_CAP,
                "messages": [{"role": "user", "content": "go on"}],
                "stop": [],
                # Greedy, so the random model cannot end early on a sampled <eos>: its greedy
                # answer to this prompt runs to max_tokens.
                "temperature": 0,
            }
            with pytest.raises(httpx.TimeoutException):
                async with httpx.AsyncClient(base_url=server.base_url, timeout=0.5) as impatient:
                    await impatient.post("/v1/chat/completions", json=body, headers=headers)
            assert await server.services.chat.wait_idle(5)
            await server.services.chat.wait_settlements(5)
            await wait_no_hold(client, headers)
            rows = await history(client, headers)
            assert types_of(rows)[0] in ("hold_captured", "hold_released")
            if rows[0]["type"] == "hold_captured":
                assert rows[0]["completion_tokens"] < TINY_CAP / 2

    async def test_timeout_is_an_error_not_a_stop(self, make_server, make_settings):
        """A generation that times out is released in full; /v1 answers an error (504
        generation_timeout), and a stream ends with an error chunk, never finish_reason
        'stop'."""
        server = await make_server(make_settings(LEDGERCHAT_INFERENCE_DEFAULT_DEADLINE_S="0.001"))
        await server.services.engine.load(TINY)
        async with server.client() as client:
            headers = await signed_in(client, "v1t")
            body = {
                "model": TINY,
                "max_tokens": 200,
                "messages": [{"role": "user", "content": "go on"}],
            }
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status_code == 504, response.text
            error = response.json()["error"]
            assert error["code"] == "generation_timeout"
            assert error["details"]["cost_credits"] == 0
            async with client.stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers
            ) as streamed:
                assert streamed.status_code == 200
                data = [event.data async for event in sse_events(streamed)]
            assert data[-1] == "[DONE]"
            assert data[-2]["error"]["code"] == "generation_timeout"
            reasons = [c["finish_reason"] for d in data[:-1] for c in d.get("choices", [])]
            assert "stop" not in reasons
            rows = await history(client, headers)
            assert "hold_captured" not in types_of(rows)
            assert [r["reason"] for r in rows if r["type"] == "hold_released"] == [
                "timeout",
                "timeout",
            ]


class TestValidation:
    @pytest.mark.parametrize(
        "content",
        ["   ", None, [{"type": "image_url", "image_url": {"url": "data:,"}}], [], ""],
    )
    async def test_v1_blank_last_user_message_is_refused_like_api_chat(self, server, content):
        async with server.client() as client:
            headers = await signed_in(client, "blank")
            body = {"model": TINY, "messages": [{"role": "user", "content": content}]}
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "validation_failed"
            assert types_of(await history(client, headers)) == ["credits_added"]

    @pytest.mark.parametrize(
        "body",
        [
            {"message": "hi", "conversation_id": "abc\x00def"},
            {"message": "hi", "model": "tiny\x00"},
            {"message": "hi", "sampling": {"stop": ["a\x00"]}},
        ],
    )
    async def test_nul_in_chat_strings_is_refused(self, server, body):
        async with server.client() as client:
            headers = await signed_in(client, "nul")
            status, _, error = await chat(client, headers, **body)
            assert status in (400, 422), error
            assert error["error"]["code"] == "validation_failed"
            assert types_of(await history(client, headers)) == ["credits_added"]

    async def test_nul_in_v1_strings_is_refused(self, server):
        async with server.client() as client:
            headers = await signed_in(client, "nul1")
            body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "stop": "\x00"}
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status_code in (400, 422), response.text
            assert response.json()["error"]["code"] == "validation_failed"
