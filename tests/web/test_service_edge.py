"""The HTTP edge through the real app (docs/security.md): cross-site requests refused, the
client address taken from X-Forwarded-For only behind a trusted proxy, security headers on
every answer, /metrics closed to strangers, malformed input a 4xx (never a 500) and a locked
database a 503 that neither loses nor doubles a charge."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest

from tests.web.web_testing import (
    PASSWORD,
    LiveServer,
    chat,
    register,
    requests_counted,
    signed_in,
    start_server,
)
from web.app import create_app
from web.commands import uvicorn_config

# Every test here talks to a real server (the fixtures or `start_server`).
pytestmark = pytest.mark.live

WRONG = "not the password 1"


async def _lock_out(client, username: str, headers: dict[str, str] | None = None) -> None:
    for _ in range(5):
        response = await client.post(
            "/api/auth/login", json={"username": username, "password": WRONG}, headers=headers
        )
        assert response.status_code == 401, response.text


class TestCrossSite:
    async def test_login_refuses_text_plain_bodies(self, server):
        """A body a browser may send cross-site without preflight (text/plain, a form) is 415
        on the API and counts as no login attempt, so it cannot lock anyone out."""
        async with server.client() as client:
            await register(client, "victim")
            body = '{"username": "victim", "password": "not the password 1"}'
            for content_type in ("text/plain", "application/x-www-form-urlencoded"):
                for _ in range(6):
                    response = await client.post(
                        "/api/auth/login", content=body, headers={"Content-Type": content_type}
                    )
                    assert response.status_code == 415, response.text
                    assert response.json()["error"]["code"] == "unsupported_media_type"
            ok = await client.post(
                "/api/auth/login", json={"username": "victim", "password": PASSWORD}
            )
            assert ok.status_code == 200, ok.text

    async def test_cross_origin_state_change_is_refused(self, server):
        """A foreign Origin on a POST is 403 before the route runs; the service's own origin
        and requests without an Origin (non-browser clients) pass."""
        async with server.client() as client:
            await register(client, "origin")
            login = {"username": "origin", "password": PASSWORD}
            foreign = await client.post(
                "/api/auth/login", json=login, headers={"Origin": "https://evil.example"}
            )
            assert foreign.status_code == 403
            assert foreign.json()["error"]["code"] == "cross_origin_refused"
            null = await client.post("/api/auth/login", json=login, headers={"Origin": "null"})
            assert null.status_code == 403
            own = await client.post(
                "/api/auth/login", json=login, headers={"Origin": server.base_url}
            )
            assert own.status_code == 200, own.text
            assert (await client.post("/api/auth/login", json=login)).status_code == 200
            reads = await client.get("/health", headers={"Origin": "https://evil.example"})
            assert reads.status_code == 200

    @pytest.mark.parametrize("path", ["/gradio_api/queue/join", "/gradio_api/run/predict"])
    async def test_foreign_origin_on_the_pages_post_routes_is_refused(
        self, make_server, settings, path
    ):
        """The Gradio page's state-changing routes get the same edge check as the API: a POST
        from another site is 403 before Gradio runs; the page's own origin reaches Gradio."""
        server = await make_server(settings, mount_ui=True)
        body = {"data": [], "fn_index": 0, "session_hash": "origin-test"}
        async with server.client() as client:
            assert (await client.get("/")).status_code == 200
            foreign = await client.post(path, json=body, headers={"Origin": "https://evil.example"})
            assert foreign.status_code == 403, foreign.text
            assert foreign.json()["error"]["code"] == "cross_origin_refused"
            own = await client.post(path, json=body, headers={"Origin": server.base_url})
            assert own.status_code != 403, own.text

    async def test_public_url_is_the_only_accepted_origin(self, make_server, make_settings):
        """With LEDGERCHAT_PUBLIC_URL set, the Origin must be exactly that origin."""
        server = await make_server(make_settings(LEDGERCHAT_PUBLIC_URL="https://chat.example"))
        async with server.client() as client:
            await register(client, "public")
            login = {"username": "public", "password": PASSWORD}
            own = await client.post(
                "/api/auth/login", json=login, headers={"Origin": "https://chat.example"}
            )
            assert own.status_code == 200, own.text
            direct = await client.post(
                "/api/auth/login", json=login, headers={"Origin": server.base_url}
            )
            assert direct.status_code == 403


async def _serve_as_production(settings) -> LiveServer:
    """The app under `ledgerchat serve`'s own uvicorn configuration, on a free port."""
    app = create_app(settings, mount_ui=False, configure_logs=False)
    return await start_server(app, uvicorn_config(app, settings))


class TestTrustedProxies:
    async def test_forwarded_for_is_ignored_without_trusted_proxies(self, settings):
        """By default X-Forwarded-For is the client's own claim, also under `serve`'s
        uvicorn (which by itself believes it from any loopback peer): a lockout earned under
        one claimed address holds under another."""
        server = await _serve_as_production(settings)
        try:
            await self._claimed_address_changes_nothing(server)
        finally:
            await server.stop()

    async def _claimed_address_changes_nothing(self, server) -> None:
        async with server.client() as client:
            await register(client, "spoofer")
            await _lock_out(client, "spoofer", {"X-Forwarded-For": "198.51.100.1"})
            again = await client.post(
                "/api/auth/login",
                json={"username": "spoofer", "password": PASSWORD},
                headers={"X-Forwarded-For": "198.51.100.2"},
            )
            assert again.status_code == 429, again.text

    async def test_forwarded_for_from_a_trusted_proxy_names_the_client(
        self, make_server, make_settings
    ):
        """Behind a trusted proxy each client is its X-Forwarded-For address: one client's
        lockout does not lock the others out; a hop that is not an address is not believed."""
        server = await make_server(make_settings(LEDGERCHAT_TRUSTED_PROXIES="127.0.0.1/32"))
        async with server.client() as client:
            await register(client, "shared")
            await _lock_out(client, "shared", {"X-Forwarded-For": "198.51.100.1"})
            login = {"username": "shared", "password": PASSWORD}
            locked = await client.post(
                "/api/auth/login", json=login, headers={"X-Forwarded-For": "198.51.100.1"}
            )
            assert locked.status_code == 429
            other = await client.post(
                "/api/auth/login",
                json=login,
                headers={"X-Forwarded-For": "198.51.100.1, 198.51.100.2"},
            )
            assert other.status_code == 200, other.text
            garbage = await client.post(
                "/api/auth/login",
                json=login,
                headers={"X-Forwarded-For": "x" * 100},
            )
            assert garbage.status_code == 200, garbage.text

    async def test_long_forwarded_for_on_postgres_is_no_500(self, make_settings, postgres_url):
        """An X-Forwarded-For longer than the client_address column never reaches it, under
        `serve`'s uvicorn configuration with a trusted proxy."""
        settings = make_settings(database_url=postgres_url, LEDGERCHAT_TRUSTED_PROXIES="127.0.0.1")
        server = await _serve_as_production(settings)
        try:
            await self._long_address_is_a_401(server)
        finally:
            await server.stop()

    async def _long_address_is_a_401(self, server) -> None:
        async with server.client() as client:
            await register(client, "longaddr")
            response = await client.post(
                "/api/auth/login",
                json={"username": "longaddr", "password": WRONG},
                headers={"X-Forwarded-For": "1" * 65 + ", " + "f" * 200},
            )
            assert response.status_code == 401, response.text


class TestSecurityHeaders:
    async def test_every_answer_carries_them(self, server):
        """API answers, errors and edge refusals all carry CSP with frame-ancestors 'none',
        nosniff and a referrer policy."""
        async with server.client() as client:
            answers = [
                await client.get("/health"),
                await client.get("/api/nope"),
                await client.post(
                    "/api/auth/login", content="x", headers={"Content-Type": "text/plain"}
                ),
            ]
        for response in answers:
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"


class TestMetricsAccess:
    async def test_loopback_only_without_a_token(self, make_server, make_settings):
        """Without a token /metrics answers a loopback client and refuses a client a trusted
        proxy forwards from elsewhere."""
        server = await make_server(make_settings(LEDGERCHAT_TRUSTED_PROXIES="127.0.0.1"))
        async with server.client() as client:
            assert (await client.get("/metrics")).status_code == 200
            remote = await client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
            assert remote.status_code == 403
            # An unparsable hop makes the guard fall back to the peer (the local proxy): that
            # must not turn a remote client into a loopback one.
            garbled = await client.get("/metrics", headers={"X-Forwarded-For": "not-an-address"})
            assert garbled.status_code == 403

    async def test_token_required_when_configured(self, make_server, make_settings):
        """With LEDGERCHAT_METRICS_TOKEN, /metrics needs it, even from loopback."""
        server = await make_server(make_settings(LEDGERCHAT_METRICS_TOKEN="scrape-secret-1"))
        async with server.client() as client:
            assert (await client.get("/metrics")).status_code == 401
            wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            good = await client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-1"})
            assert good.status_code == 200
            assert "ledgerchat_http_request_duration_seconds" in good.text


class TestNoServerErrors:
    async def test_deeply_nested_json_is_a_400(self, server):
        """A body nested deeper than the decoder recurses is malformed input, on the public
        login route as on any other."""
        nested = "[" * 100_000 + "]" * 100_000
        async with server.client() as client:
            headers = await signed_in(client, "nester")
            for path, extra in (("/api/auth/login", {}), ("/api/chat", headers)):
                response = await client.post(
                    path,
                    content=nested,
                    headers={"Content-Type": "application/json", **extra},
                )
                assert response.status_code == 400, (path, response.status_code)
                assert response.json()["error"]["code"] == "validation_failed"

    async def test_a_bad_call_of_the_pages_events_is_a_4xx(self, make_server, settings):
        """An event call of the page (queue/join, run/predict) that names no server-side
        handler, gives a direct call fewer inputs than its handler takes, or is no call at all
        is the caller's error in the service's shape (Gradio answered 500), and the metrics
        count it under the UI's mount, not `unmatched`."""
        server = await make_server(settings, mount_ui=True)
        async with server.client(headers={"Origin": server.base_url}) as client:
            config = (await client.get("/config")).json()
            takes_inputs = next(
                dep["id"] for dep in config["dependencies"] if dep["backend_fn"] and dep["inputs"]
            )
            before = (await client.get("/metrics")).text
            calls = [
                ("run/predict", {"fn_index": takes_inputs, "data": []}, 422),
                ("run/predict", {"fn_index": 100_000, "data": []}, 404),
                ("queue/join", {"fn_index": 100_000, "data": []}, 404),
                ("queue/join", {"fn_index": "first", "data": []}, 422),
                ("queue/join", "[" * 100_000 + "]" * 100_000, 422),
            ]
            for route, call, status in calls:
                body = call if isinstance(call, str) else json.dumps({**call, "session_hash": "s"})
                answer = await client.post(
                    f"/gradio_api/{route}",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
                assert answer.status_code == status, (route, call, answer.text)
                assert set(answer.json()["error"]) == {"code", "message", "details"}
            after = (await client.get("/metrics")).text
        counted = {
            status: requests_counted(after, "/gradio_api/*", status)
            - requests_counted(before, "/gradio_api/*", status)
            for status in ("404", "422", "500")
        }
        assert counted == {"404": 2, "422": 3, "500": 0}

    async def test_usage_at_the_calendar_limits(self, server):
        """/api/usage with the first and last representable dates answers 200 or 422."""
        async with server.client() as client:
            headers = await signed_in(client, "calendar")
            for query in (
                "since=0001-01-01&until=0001-01-01",
                "since=9999-12-31&until=9999-12-31",
                "since=9999-12-01&until=9999-12-31",
                "until=0001-01-01",
                "since=9999-12-31",
            ):
                response = await client.get(f"/api/usage?{query}", headers=headers)
                assert response.status_code in (200, 422), (query, response.text)


class TestStorageBusy:
    async def test_locked_database_is_503_and_charges_once(self, server, sqlite_url):
        """A write lock held past the busy timeout answers 503 storage_busy with Retry-After,
        on login and on a chat; the chat retried with its key afterwards is charged once."""
        async with server.client() as client:
            headers = await signed_in(client, "busy")
            before = (await client.get("/api/balance", headers=headers)).json()["posted"]
            keyed = {**headers, "Idempotency-Key": "busy-chat-1"}
            blocker = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            try:
                login = await client.post(
                    "/api/auth/login", json={"username": "busy", "password": PASSWORD}
                )
                status, _, refused = await chat(client, keyed, sampling={"max_tokens": 2})
            finally:
                blocker.rollback()
                blocker.close()
            assert login.status_code == 503, login.text
            assert login.json()["error"]["code"] == "storage_busy"
            assert int(login.headers["retry-after"]) >= 1
            assert (status, refused["error"]["code"]) == (503, "storage_busy")
            status, events, _ = await chat(client, keyed, sampling={"max_tokens": 2})
            assert status == 200
            done = events[-1].data
            replay_status, replay, _ = await chat(client, keyed, sampling={"max_tokens": 2})
            assert replay_status == 200 and replay[-1].data["replayed"]
            after = (await client.get("/api/balance", headers=headers)).json()["posted"]
            assert before - after == done["cost_credits"] > 0


class TestCsvExport:
    async def test_formula_cells_are_neutralised(self, server):
        """A note an admin typed that starts like a formula is exported with a leading `'`;
        negative amounts stay numbers."""
        async with server.client() as client:
            headers = await signed_in(client, "csvuser")
            user_id = (await client.get("/api/me", headers=headers)).json()["id"]
            await server.services.accounts.register(
                "csvroot", "csvroot@example.com", PASSWORD, role="admin"
            )
            admin = await client.post(
                "/api/auth/login", json={"username": "csvroot", "password": PASSWORD}
            )
            admin_headers = {"Authorization": f"Bearer {admin.json()['access_token']}"}
            notes = ['=HYPERLINK("http://evil.example","x")', "+1", "-2+3", "@SUM(A1)", "\tx"]
            for index, note in enumerate(notes):
                response = await client.post(
                    f"/api/admin/users/{user_id}/credits",
                    json={"amount": 1, "note": note},
                    headers={**admin_headers, "Idempotency-Key": f"csv-{index}"},
                )
                assert response.status_code == 200, response.text
            await chat(client, headers, sampling={"max_tokens": 2})
            exported = await client.get("/api/transactions?format=csv", headers=headers)
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        exported_notes = {row["note"] for row in rows if row["note"]}
        assert {"'" + note for note in notes} <= exported_notes, exported_notes
        charges = [row for row in rows if row["type"] == "hold_captured"]
        assert charges and all(int(row["amount"]) < 0 for row in charges)
