"""The error contract of docs/api.md at its edges: stable codes for Litestar's own errors and
for ledger refusals, Retry-After where promised, bad input as a 4xx (never a 500), and
settings that refuse to start with values that would break the service."""

from __future__ import annotations

import pytest

from tests.web.web_testing import PASSWORD, login, signed_in
from web.settings import SettingsError, load_settings


async def _admin(server, client) -> dict[str, str]:
    await server.services.accounts.register("root", "root@example.com", PASSWORD, role="admin")
    return {"Authorization": f"Bearer {(await login(client, 'root'))['access_token']}"}


class TestStableCodes:
    async def test_litestar_errors_have_documented_codes(self, make_server, make_settings):
        """Unknown route, wrong method, oversized body and a missing body each get a
        documented code and a message a person can act on."""
        server = await make_server(make_settings(LEDGERCHAT_MAX_REQUEST_BODY_BYTES="2000"))
        async with server.client() as client:
            headers = await signed_in(client, "errors")
            unknown = await client.get("/api/nope", headers=headers)
            assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
            method = await client.put("/api/auth/login", json={})
            assert (method.status_code, method.json()["error"]["code"]) == (
                405,
                "method_not_allowed",
            )
            big = await client.post("/api/keys", json={"name": "x" * 5000}, headers=headers)
            assert (big.status_code, big.json()["error"]["code"]) == (413, "request_too_large")
            empty = await client.post("/api/keys", headers=headers)
            assert empty.status_code == 400
            assert empty.json()["error"]["code"] == "validation_failed"
            assert "body" in empty.json()["error"]["message"]

    async def test_admin_top_up_key_reuse_and_length(self, server):
        """Reusing a top-up key with another amount is idempotency_key_reused (the ledger's
        own code in the details); the longest key the header accepts fits the ledger."""
        async with server.client() as client:
            headers = await signed_in(client, "topped")
            user_id = (await client.get("/api/me", headers=headers)).json()["id"]
            admin = await _admin(server, client)
            url = f"/api/admin/users/{user_id}/credits"
            first = await client.post(
                url, json={"amount": 5}, headers={**admin, "Idempotency-Key": "k1"}
            )
            assert first.status_code == 200, first.text
            reused = await client.post(
                url, json={"amount": 6}, headers={**admin, "Idempotency-Key": "k1"}
            )
            assert reused.status_code == 422
            error = reused.json()["error"]
            assert (error["code"], error["details"]["ledger_code"]) == (
                "idempotency_key_reused",
                "idempotency_conflict",
            )
            for length, status in ((194, 200), (195, 400)):
                response = await client.post(
                    url, json={"amount": 1}, headers={**admin, "Idempotency-Key": "k" * length}
                )
                assert response.status_code == status, (length, response.text)


class TestRetryAfter:
    async def test_too_many_active_holds_says_when_to_retry(self, make_server, make_settings):
        """429 too_many_active_holds carries Retry-After like every other 429."""
        server = await make_server(
            make_settings(LEDGERCHAT_LEDGER_MAX_ACTIVE_HOLDS_PER_ACCOUNT="1")
        )
        async with server.client() as client:
            headers = await signed_in(client, "holder")
            account = (await client.get("/api/me", headers=headers)).json()["account_id"]
            await server.services.ledger.place_hold(
                account, 1, ttl_s=600, purpose="test", reference="r", idempotency_key="h"
            )
            response = await client.post("/api/chat", json={"message": "hi"}, headers=headers)
            assert response.status_code == 429
            assert response.json()["error"]["code"] == "too_many_active_holds"
            assert int(response.headers["retry-after"]) >= 1


class TestBadInputIsAClientError:
    @pytest.mark.parametrize("cursor", ["9" * 30, "%C2%B2", "-5", "abc"])
    async def test_malformed_history_cursor(self, server, cursor: str):
        async with server.client() as client:
            headers = await signed_in(client, "cursor")
            response = await client.get(f"/api/transactions?cursor={cursor}", headers=headers)
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "validation_failed"

    async def test_control_characters_in_key_names_and_conversation_ids(self, server):
        async with server.client() as client:
            headers = await signed_in(client, "nul")
            key = await client.post("/api/keys", json={"name": "a\u0000b"}, headers=headers)
            assert (key.status_code, key.json()["error"]["code"]) == (422, "validation_failed")
            for method in ("GET", "PATCH", "DELETE"):
                response = await client.request(
                    method, "/api/conversations/a%00b", json={"title": "t"}, headers=headers
                )
                assert response.status_code == 400, (method, response.text)
            assert (await client.get("/api/keys", headers=headers)).json() == []


class TestRateLimitExemptions:
    async def test_only_the_probes_themselves_are_exempt(self, make_server, make_settings):
        """/health is never limited, but /healthz or /metricsXYZ are ordinary paths."""
        server = await make_server(make_settings(LEDGERCHAT_RATE_LIMIT_PER_ADDRESS_PER_MINUTE="2"))
        async with server.client() as client:
            statuses = [(await client.get(path)).status_code for path in ("/healthz",) * 3]
            assert statuses == [404, 404, 429]
            assert (await client.get("/metricsXYZ")).status_code == 429
            assert (await client.get("/health")).status_code == 200


class TestSettingsRefuseToStart:
    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("LEDGERCHAT_RATE_LIMIT_CHAT_PER_USER_PER_MINUTE", "0"),
            ("LEDGERCHAT_RATE_LIMIT_MAX_TRACKED_CLIENTS", "0"),
            ("LEDGERCHAT_MAX_REQUEST_BODY_BYTES", "-1"),
            ("LEDGERCHAT_AUTH_PASSWORD_MIN_LENGTH", "300"),
            ("LEDGERCHAT_AUTH_LOCKOUT_WINDOW_S", "-5"),
            ("LEDGERCHAT_AUTH_MAX_API_KEYS_PER_USER", "0"),
            ("LEDGERCHAT_BILLING_MAX_IDEMPOTENCY_KEY_LENGTH", "300"),
            ("LEDGERCHAT_BILLING_SWEEP_INTERVAL_S", "nan"),
            ("LEDGERCHAT_SHUTDOWN_GRACE_S", "inf"),
        ],
    )
    def test_bad_value_names_the_variable(self, name: str, value: str):
        with pytest.raises(SettingsError, match=name):
            load_settings(environ={name: value}, env_file=None)


class TestOpenApiMatchesBehaviour:
    async def test_documented_statuses(self, server):
        """The statuses in /schema/openapi.json are the ones the handlers really answer."""
        async with server.client() as client:
            paths = (await client.get("/schema/openapi.json")).json()["paths"]

        def statuses(path: str, method: str) -> set[str]:
            return set(paths[path][method]["responses"])

        assert {"401"} <= statuses("/api/auth/login", "post")
        assert {"401"} <= statuses("/api/auth/refresh", "post")
        assert {"409"} <= statuses("/api/auth/register", "post")
        # Login's only 403 is a browser request from another site (docs/security.md).
        assert "Origin" in paths["/api/auth/login"]["post"]["responses"]["403"]["description"]
        assert {"415", "403"} <= statuses("/api/keys", "post")
        assert "403" in statuses("/api/auth/login", "post")  # also a disabled account
        assert statuses("/health", "get") == {"200"}
        ready = paths["/ready"]["get"]["responses"]
        assert ready["503"]["content"] == ready["200"]["content"]
        for path, item in paths.items():
            for method, operation in item.items():
                if method in ("post", "put", "patch") and "requestBody" in operation:
                    assert "413" in operation["responses"], (method, path)
        assert paths["/api/auth/logout"]["post"]["requestBody"]["required"] is False


class TestControlCharactersInAccounts:
    async def test_register_and_login_refuse_control_characters(self, server):
        """NUL or a bidi override in an email, or NUL in a login name, is a validation error
        on both backends, and nothing is stored."""
        async with server.client() as client:
            for email in ("a\u0000b@example.com", "a\u202eb@example.com"):
                response = await client.post(
                    "/api/auth/register",
                    json={"username": "ctrl", "email": email, "password": PASSWORD},
                )
                assert response.status_code == 422, response.text
                assert response.json()["error"]["code"] == "validation_failed"
            login = await client.post(
                "/api/auth/login", json={"username": "ct\u0000rl", "password": PASSWORD}
            )
            assert (login.status_code, login.json()["error"]["code"]) == (422, "validation_failed")
            await signed_in(client, "ctrl")  # the name is still free
