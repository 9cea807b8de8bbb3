"""Probes, metrics, request ids in JSON logs, settings, and the retention job."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.web.conftest import TINY
from tests.web.web_testing import chat, requests_counted, signed_in
from web.background import clear_old_interaction_text
from web.settings import SettingsError, load_settings
from web.tables import ModelInteractionRow


class TestProbes:
    async def test_health_and_ready(self, make_server, settings):
        """/health answers at once; /ready is 503 until the default model is loaded."""
        server = await make_server(settings)
        async with server.client() as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            await server.services.engine.load("tiny")
            ready = await client.get("/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {
                "database": "ok",
                "schema": "ok",
                "ledger_schema": "ok",
                "default_model": "ok",
            }

    async def test_not_ready_without_the_default_model(self, make_server, make_settings):
        """A default model that cannot load keeps /ready at 503 with the reason."""
        server = await make_server(make_settings(LEDGERCHAT_CHAT_DEFAULT_MODEL="tiny-broken"))
        async with server.client() as client:
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["default_model"] != "ok"

    async def test_metrics_after_a_chat(self, server):
        """/metrics exposes request latency, tokens, holds, ledger operations, model state and
        memory in Prometheus text format."""
        async with server.client() as client:
            headers = await signed_in(client, "metric")
            await chat(client, headers, sampling={"max_tokens": 4})
            text = (await client.get("/metrics")).text
        for name in (
            "ledgerchat_http_request_duration_seconds_bucket",
            "ledgerchat_tokens_generated_total",
            "ledgerchat_chat_tokens_per_second",
            "ledgerchat_inference_queue_depth",
            "ledgerchat_active_holds",
            'ledgerchat_ledger_operations_total{operation="place_hold"}',
            'ledgerchat_model_loaded{model="tiny"} 1.0',
            "ledgerchat_process_resident_memory_bytes",
        ):
            assert name in text, name


async def start_capturing_logs(server: Any, capfd: pytest.CaptureFixture[str]) -> None:
    """Drop what was written so far, once the default model has loaded: its loading progress
    bars (stderr, no newline) would otherwise run into the JSON log lines."""
    await server.services.engine.load(TINY)
    capfd.readouterr()


class TestRequestIds:
    async def test_every_log_line_of_a_request_has_its_id(self, make_server, make_settings, capfd):
        """The X-Request-ID given by the client is echoed and is on every JSON log line
        written while handling the request."""
        settings = make_settings(LEDGERCHAT_LOG_LEVEL="info")
        server = await make_server(settings, configure_logs=True)
        async with server.client() as client:
            await start_capturing_logs(server, capfd)
            response = await client.post(
                "/api/auth/register",
                json={"username": "logger", "email": "l@example.com", "password": "pass word 123"},
                headers={"X-Request-ID": "req-abc-123"},
            )
            assert response.headers["x-request-id"] == "req-abc-123"
            generated = await client.get("/health")
            assert len(generated.headers["x-request-id"]) == 32
        captured = capfd.readouterr().err.splitlines()
        lines = [json.loads(line) for line in captured if line.startswith("{")]
        mine = [line for line in lines if line.get("request_id") == "req-abc-123"]
        events = {line["event"] for line in mine}
        # The signup grant is logged by the ledger's writer task, inside the request's context.
        assert {"user_registered", "credit_transaction", "request_finished"} <= events
        for line in lines:
            if line.get("path") == "/api/auth/register":
                assert line["request_id"] == "req-abc-123"

    async def test_error_responses_have_an_id_and_their_real_status(
        self, make_server, make_settings, capfd
    ):
        """Responses made outside the route's handler (401 from authentication, 404 for an
        unknown path) also carry X-Request-ID and are logged and counted with their status."""
        settings = make_settings(LEDGERCHAT_LOG_LEVEL="info")
        server = await make_server(settings, configure_logs=True)
        async with server.client() as client:
            await start_capturing_logs(server, capfd)
            # The registry is the process's: other tests' requests are in it. Count only what
            # these requests add.
            before = (await client.get("/metrics")).text
            sent = {"/api/me": 401, "/api/no-such-thing": 404, "/no-such-page": 404}
            for number, (path, expected) in enumerate(sent.items()):
                response = await client.get(path, headers={"X-Request-ID": f"probe-{number}"})
                assert response.status_code == expected, path
                assert response.headers["x-request-id"] == f"probe-{number}"
            metrics = (await client.get("/metrics")).text
        lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if "{" in line]
        finished = {
            line["path"]: line["status"] for line in lines if line["event"] == "request_finished"
        }
        assert {path: finished.get(path) for path in sent} == sent
        added = {
            (route, status): requests_counted(metrics, route, status)
            - requests_counted(before, route, status)
            for route in ("/api/me", "unmatched")
            for status in ("401", "404", "500")
        }
        assert added[("unmatched", "404")] == 2
        assert added[("/api/me", "401")] == 1
        assert added[("unmatched", "500")] == 0
        assert added[("/api/me", "500")] == 0


class TestSettings:
    def test_env_file_and_environment(self, tmp_path: Path):
        """The environment overrides .env, which overrides defaults; bad values are errors."""
        env_file = tmp_path / ".env"
        env_file.write_text("LEDGERCHAT_PORT=9000\nLEDGERCHAT_AUTH_LOCKOUT_FAILURES='7'\n# c\n")
        settings = load_settings(environ={"LEDGERCHAT_PORT": "9100"}, env_file=env_file)
        assert settings.server.port == 9100
        assert settings.auth.lockout_failures == 7
        assert settings.billing.signup_grant_credits == 100
        with pytest.raises(SettingsError, match="LEDGERCHAT_PORT"):
            load_settings(environ={"LEDGERCHAT_PORT": "eighty"}, env_file=None)
        with pytest.raises(SettingsError, match="BILLING_PARTIAL"):
            load_settings(
                environ={"LEDGERCHAT_BILLING_PARTIAL_CAPTURE_ON_DISCONNECT": "maybe"},
                env_file=None,
            )


class TestRetention:
    async def test_old_prompt_and_response_text_is_cleared(self, server):
        """Interactions older than the retention period lose their text but keep tokens and
        credits; recent ones are untouched."""
        async with server.client() as client:
            headers = await signed_in(client, "keeper")
            await chat(client, headers, "old message", sampling={"max_tokens": 4})
            await chat(client, headers, "new message", sampling={"max_tokens": 4})
        services = server.services
        sessions = services.chat._sessions
        retention_days = services.settings.chat.retention_days
        async with sessions() as session:
            rows = list(
                await session.scalars(select(ModelInteractionRow).order_by(ModelInteractionRow.id))
            )
            old_id = rows[0].id
            await session.execute(
                update(ModelInteractionRow)
                .where(ModelInteractionRow.id == old_id)
                .values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=retention_days + 1))
            )
            await session.commit()
        assert await clear_old_interaction_text(sessions, retention_days) == 1
        async with sessions() as session:
            old, new = list(
                await session.scalars(select(ModelInteractionRow).order_by(ModelInteractionRow.id))
            )
        assert old.prompt is None and old.response is None and old.text_cleared_at is not None
        assert old.credits_charged > 0 and old.completion_tokens > 0
        assert new.prompt == "new message" and new.response is not None
