"""Chat between the port opening and the default model being loaded: `serve` opens its port
while the model is prepared (a GGUF converted on a first start) and loaded in the background,
/ready and /api/models say how far it has come, and a chat sent then is refused at once with
503 `model_loading` and a Retry-After (on /v1 in the OpenAI error shape), nothing claimed or
held, instead of hanging until the load ends."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

import inference.engine
from tests.inference.tiny_gguf import (
    conversion_lock_held,
    tiny_gguf_catalog_entry,
    write_tiny_gguf,
)
from tests.web.conftest import SettingsFactory
from tests.web.web_testing import chat, signed_in

# Generous: the gate is opened by the test itself; this only keeps a failed test from hanging.
GATE_TIMEOUT_S = 120.0
POLL_S = 0.1
TINY_GGUF = "tiny-gguf"


def hold_model_loads(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Every model load waits (off the event loop, in the engine's load thread) until the
    returned event is set, then loads for real: a deterministic 'still loading' window."""
    gate = threading.Event()
    real_load_model = inference.engine.load_model

    def gated_load_model(*args: Any, **kwargs: Any) -> Any:
        gate.wait(GATE_TIMEOUT_S)
        return real_load_model(*args, **kwargs)

    monkeypatch.setattr(inference.engine, "load_model", gated_load_model)
    return gate


async def history_types(client: Any, headers: dict[str, str]) -> list[str]:
    rows = (await client.get("/api/transactions", headers=headers)).json()["transactions"]
    return [row["type"] for row in rows]


class TestChatWhileTheModelLoads:
    async def test_api_chat_is_refused_with_retry_after_and_nothing_held(
        self, monkeypatch, make_server, settings
    ):
        """/api/chat during the load: 503 `model_loading` with Retry-After, the balance and
        history untouched, /ready 503; the same Idempotency-Key then works once loaded."""
        gate = hold_model_loads(monkeypatch)
        server = await make_server(settings, wait_for_model=False)
        try:
            async with server.client() as client:
                headers = await signed_in(client, "lena")
                before = (await client.get("/api/balance", headers=headers)).json()
                key = {**headers, "Idempotency-Key": "while-loading-1"}
                status, _, body = await chat(client, key, sampling={"max_tokens": 4})
                assert status == 503, body
                assert body["error"]["code"] == "model_loading"
                assert "still loading" in body["error"]["message"]
                refused = await client.post(
                    "/api/chat",
                    json={"message": "hi", "sampling": {"max_tokens": 4}},
                    headers=headers,
                )
                assert refused.status_code == 503
                assert int(refused.headers["retry-after"]) >= 1
                assert (await client.get("/api/balance", headers=headers)).json() == before
                assert await history_types(client, headers) == ["credits_added"]
                assert (await client.get("/ready")).status_code == 503
        finally:
            gate.set()
        outcome = await server.services.default_model_outcome()
        assert outcome is not None and outcome.error is None
        async with server.client() as client:
            status, events, body = await chat(client, key, sampling={"max_tokens": 4})
            assert status == 200, body
            assert events[-1].event == "done"
            assert (await client.get("/ready")).status_code == 200

    async def test_v1_is_refused_in_the_openai_error_shape(
        self, monkeypatch, make_server, settings
    ):
        """/v1/chat/completions during the load: the official client sees status 503, code
        `model_loading` and a Retry-After header; nothing is held."""
        gate = hold_model_loads(monkeypatch)
        server = await make_server(settings, wait_for_model=False)
        try:
            async with server.client() as http:
                headers = await signed_in(http, "maks")
                created = await http.post("/api/keys", json={"name": "sdk"}, headers=headers)
                secret = created.json()["secret"]
            client = openai.AsyncOpenAI(
                base_url=f"{server.base_url}/v1", api_key=secret, max_retries=0
            )
            with pytest.raises(openai.APIStatusError) as raised:
                await client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
            await client.close()
            assert raised.value.status_code == 503
            assert raised.value.code == "model_loading"
            assert int(raised.value.response.headers["retry-after"]) >= 1
            async with server.client() as http:
                assert (await http.get("/api/balance", headers=headers)).json()["held"] == 0
                assert await history_types(http, headers) == ["credits_added"]
        finally:
            gate.set()

    def test_the_page_says_the_model_is_loading(self):
        """The chat page's notice for this refusal says so (and that nothing was charged)."""
        from web.errors import ModelLoading
        from web.ui.chat import refusal_notice

        notice = refusal_notice(
            ModelLoading(
                "The model tiny is still loading (started 2 s ago). Nothing was charged; "
                "try again in 5 seconds.",
                model_id="tiny",
                retry_after_s=5,
            )
        )
        assert "still loading" in notice and "Nothing was charged" in notice


@pytest.fixture
def gguf_settings(make_settings: SettingsFactory, tmp_path: Path) -> Any:
    """Settings whose default model is a tiny GGUF, converted at the first start into this
    test's own cache directory (`cache_dir`)."""
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
    catalog = tmp_path / "gguf-catalog.toml"
    catalog.write_text(tiny_gguf_catalog_entry(TINY_GGUF, gguf_path), encoding="utf-8")
    return make_settings(
        LEDGERCHAT_CATALOG=str(catalog),
        LEDGERCHAT_CHAT_DEFAULT_MODEL=TINY_GGUF,
        LEDGERCHAT_INFERENCE_CACHE_DIR=str(tmp_path / "gguf-cache"),
    )


async def wait_for_loading_stage(client: Any, stage: str) -> dict[str, Any]:
    """Poll /api/models (generous deadline) until the default model reports `stage`."""
    headers = await signed_in(client, "watcher")
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while time.monotonic() < deadline:
        models = (await client.get("/api/models", headers=headers)).json()
        model = next(m for m in models if m["id"] == TINY_GGUF)
        if model["loading_stage"] == stage:
            return dict(model)
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"{TINY_GGUF} never reported {stage!r}; last: {model}")


class TestThePortOpensBeforeTheConversion:
    async def test_preparation_runs_behind_an_open_port_and_reports_its_progress(
        self, make_server, gguf_settings, tmp_path
    ):
        """A first start whose GGUF cannot be converted yet (another process holds the cache's
        conversion lock): the port answers, /ready is 503 with the default model's loading
        percentage, /api/models shows it with the stage, and a chat is refused with
        `model_loading` naming the percentage, nothing held. Once the lock is released the
        conversion and load finish, and /ready is 200 with no loading percentage."""
        with conversion_lock_held(tmp_path / "gguf-cache"):
            server = await make_server(gguf_settings, wait_for_model=False)
            async with server.client() as client:
                assert (await client.get("/health")).status_code == 200
                model = await wait_for_loading_stage(
                    client, "waiting for another conversion of this cache"
                )
                assert 0 < model["loading_percent"] < 10, model
                assert model["loaded"] is False
                ready = await client.get("/ready")
                assert ready.status_code == 503
                body = ready.json()
                assert body["loading_percent"] == model["loading_percent"]
                assert body["checks"]["default_model"] == (
                    f"{TINY_GGUF} is loading: {model['loading_percent']}% "
                    "(waiting for another conversion of this cache)"
                )
                headers = await signed_in(client, "early")
                before = (await client.get("/api/balance", headers=headers)).json()
                status, _, refused = await chat(client, headers, sampling={"max_tokens": 4})
                assert status == 503, refused
                assert refused["error"]["code"] == "model_loading"
                assert f"{model['loading_percent']}% done" in refused["error"]["message"]
                assert (await client.get("/api/balance", headers=headers)).json() == before
                assert await history_types(client, headers) == ["credits_added"]
        outcome = await asyncio.wait_for(server.services.default_model_outcome(), GATE_TIMEOUT_S)
        assert outcome is not None and outcome.error is None, outcome
        async with server.client() as client:
            ready = await client.get("/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["loading_percent"] is None
            status, events, body = await chat(client, headers, sampling={"max_tokens": 4})
            assert status == 200, body
            assert events[-1].event == "done"
