"""Accounts and sessions over HTTP: registration rules, 401 cases with JSON bodies, refresh
rotation and reuse detection, logout, lockout, rate limits, roles, API keys."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from tests.web.web_testing import PASSWORD, login, register, signed_in

SECRET = "test-secret-that-is-long-enough-for-hs256"


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class TestRegistration:
    async def test_rules_are_enforced(self, server):
        """Short usernames, bad emails, weak passwords and duplicates are refused with a
        JSON error naming the problem."""
        async with server.client() as client:
            await register(client, "carol")
            cases = [
                ({"username": "ab", "email": "x@example.com", "password": PASSWORD}, 400),
                ({"username": "dave", "email": "not-an-email", "password": PASSWORD}, 422),
                ({"username": "dave", "email": "d@example.com", "password": "short1"}, 422),
                (
                    {"username": "dave", "email": "d@example.com", "password": "lettersonlyhere"},
                    422,
                ),
                ({"username": "carol", "email": "c2@example.com", "password": PASSWORD}, 409),
                ({"username": "carol2", "email": "carol@example.com", "password": PASSWORD}, 409),
            ]
            for body, status in cases:
                response = await client.post("/api/auth/register", json=body)
                assert response.status_code == status, (body, response.text)
                assert "code" in response.json()["error"]


class TestTokens:
    @pytest.mark.parametrize(
        "authorization",
        [
            None,
            "Bearer",
            "Basic dXNlcjpwYXNz",
            "Bearer not.a.jwt",
            "Bearer lc-not-a-real-api-key",
        ],
    )
    async def test_missing_or_malformed_credentials_get_401(self, server, authorization):
        """Every protected endpoint answers 401 with a JSON error body."""
        headers = {} if authorization is None else {"Authorization": authorization}
        async with server.client() as client:
            response = await client.get("/api/me", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "not_authenticated"
        assert response.headers["www-authenticate"] == "Bearer"

    async def test_expired_tampered_alg_none_and_wrong_key_get_401(self, server):
        """Forged tokens never authenticate: expired, re-signed with another key, `alg: none`,
        or a valid token whose payload was edited."""
        async with server.client() as client:
            user = await register(client, "erin")
            now = int(time.time())
            claims = {"sub": str(user["id"]), "role": "admin", "typ": "access", "iat": now}
            expired = jwt.encode({**claims, "exp": now - 10}, SECRET, algorithm="HS256")
            wrong_key = jwt.encode({**claims, "exp": now + 600}, "other-key" * 4, algorithm="HS256")
            alg_none = (
                f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({**claims, 'exp': now + 600})}."
            )
            valid = (await login(client, "erin"))["access_token"]
            header, _, signature = valid.split(".")
            tampered = f"{header}.{_b64({**claims, 'exp': now + 600})}.{signature}"
            for token in (expired, wrong_key, alg_none, tampered):
                response = await client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
                assert response.status_code == 401, token
            ok = await client.get("/api/me", headers={"Authorization": f"Bearer {valid}"})
            assert ok.status_code == 200

    async def test_refresh_rotates_and_reuse_revokes_the_family(self, server):
        """A refresh token works once; presenting it again revokes every token of that
        session, including the one issued by the rotation."""
        async with server.client() as client:
            await register(client, "frank")
            first = await login(client, "frank")
            rotated = await client.post(
                "/api/auth/refresh", json={"refresh_token": first["refresh_token"]}
            )
            assert rotated.status_code == 200
            second = rotated.json()
            assert second["refresh_token"] != first["refresh_token"]
            assert (
                await client.get(
                    "/api/me", headers={"Authorization": f"Bearer {second['access_token']}"}
                )
            ).status_code == 200

            reuse = await client.post(
                "/api/auth/refresh", json={"refresh_token": first["refresh_token"]}
            )
            assert reuse.status_code == 401
            after_reuse = await client.post(
                "/api/auth/refresh", json={"refresh_token": second["refresh_token"]}
            )
            assert after_reuse.status_code == 401
            # The access token of the revoked family ends now, not at its expiry.
            assert (
                await client.get(
                    "/api/me", headers={"Authorization": f"Bearer {second['access_token']}"}
                )
            ).status_code == 401

            other_session = await login(client, "frank")
            assert (
                await client.post(
                    "/api/auth/refresh", json={"refresh_token": other_session["refresh_token"]}
                )
            ).status_code == 200

    async def test_logout_revokes_the_session(self, server):
        """After logout the session's refresh and access tokens are refused at once; another
        session of the same user goes on until it too is signed out."""
        async with server.client() as client:
            await register(client, "gina")
            tokens = await login(client, "gina")
            other = await login(client, "gina")
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            other_headers = {"Authorization": f"Bearer {other['access_token']}"}
            response = await client.post(
                "/api/auth/logout", json={"refresh_token": tokens["refresh_token"]}, headers=headers
            )
            assert response.status_code == 204
            refused = await client.post(
                "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
            )
            assert refused.status_code == 401
            assert (await client.get("/api/me", headers=headers)).status_code == 401
            assert (await client.get("/api/me", headers=other_headers)).status_code == 200
            everywhere = await client.post("/api/auth/logout", headers=other_headers)
            assert everywhere.status_code == 204
            assert (await client.get("/api/me", headers=other_headers)).status_code == 401


class TestLockout:
    async def test_five_failures_lock_the_account_for_that_client(self, server):
        """After 5 wrong passwords within the window the right password is refused too, with
        429 and Retry-After."""
        async with server.client() as client:
            await register(client, "hank")
            for _ in range(server.services.settings.auth.lockout_failures):
                wrong = await client.post(
                    "/api/auth/login", json={"username": "hank", "password": "wrong password 1"}
                )
                assert wrong.status_code == 401
            locked = await client.post(
                "/api/auth/login", json={"username": "hank", "password": PASSWORD}
            )
            assert locked.status_code == 429
            assert locked.json()["error"]["code"] == "login_locked"
            retry_after = int(locked.headers["retry-after"])
            assert 0 < retry_after <= server.services.settings.auth.lockout_window_s + 1

    async def test_failures_below_the_limit_then_success_reset(self, server):
        """Four failures and a success leave the account usable."""
        async with server.client() as client:
            await register(client, "iris")
            for _ in range(server.services.settings.auth.lockout_failures - 1):
                await client.post(
                    "/api/auth/login", json={"username": "iris", "password": "wrong password 1"}
                )
            await login(client, "iris")
            await client.post(
                "/api/auth/login", json={"username": "iris", "password": "wrong password 1"}
            )
            await login(client, "iris")


class TestRateLimits:
    async def test_per_user_limit(self, make_server, make_settings):
        """Beyond the per-user budget a user gets 429 with Retry-After."""
        server = await make_server(make_settings(LEDGERCHAT_RATE_LIMIT_PER_USER_PER_MINUTE="5"))
        async with server.client() as client:
            headers = await signed_in(client, "jack")
            statuses = [
                (await client.get("/api/me", headers=headers)).status_code for _ in range(7)
            ]
            assert statuses[:5] == [200] * 5
            assert statuses[5:] == [429, 429]
            limited = await client.get("/api/me", headers=headers)
            assert int(limited.headers["retry-after"]) >= 1
            assert limited.json()["error"]["code"] == "rate_limited"

    async def test_per_address_limit(self, make_server, make_settings):
        """Beyond the per-address budget every endpoint answers 429, probes excepted."""
        server = await make_server(make_settings(LEDGERCHAT_RATE_LIMIT_PER_ADDRESS_PER_MINUTE="3"))
        async with server.client() as client:
            statuses = [(await client.get("/api/models")).status_code for _ in range(5)]
            assert statuses[3:] == [429, 429]
            assert (await client.get("/health")).status_code == 200

    async def test_ui_static_files_do_not_use_the_address_budget(self, make_server, make_settings):
        """One page load fetches dozens of scripts and styles; those must not use up the
        address's budget, which the page itself and the API still count."""
        settings = make_settings(LEDGERCHAT_RATE_LIMIT_PER_ADDRESS_PER_MINUTE="3")
        server = await make_server(settings, mount_ui=True)
        async with server.client() as client:
            page = await client.get("/")
            assert page.status_code == 200
            scripts = [part.split('"')[0] for part in page.text.split('src="./')[1:]]
            assert scripts, "the page links no scripts"
            for _ in range(3):
                for script in scripts:
                    assert (await client.get(f"/{script}")).status_code == 200, script
            # The page used one request of 3; no credentials: 401 until the budget is gone.
            statuses = [(await client.get("/api/models")).status_code for _ in range(3)]
            assert statuses == [401, 401, 429]


class TestRolesAndKeys:
    async def test_admin_endpoints_need_the_admin_role(self, server):
        """A plain user gets 403 from /api/admin; an admin made by the service can top up."""
        async with server.client() as client:
            headers = await signed_in(client, "kate")
            user_id = (await client.get("/api/me", headers=headers)).json()["id"]
            assert (await client.get("/api/admin/users", headers=headers)).status_code == 403
            await server.services.accounts.register(
                "root", "root@example.com", PASSWORD, role="admin"
            )
            admin = {"Authorization": f"Bearer {(await login(client, 'root'))['access_token']}"}
            topup = await client.post(
                f"/api/admin/users/{user_id}/credits",
                json={"amount": 50},
                headers={**admin, "Idempotency-Key": "topup-1"},
            )
            assert topup.status_code == 200, topup.text
            again = await client.post(
                f"/api/admin/users/{user_id}/credits",
                json={"amount": 50},
                headers={**admin, "Idempotency-Key": "topup-1"},
            )
            assert again.json()["balance"] == topup.json()["balance"]
            grant = server.services.settings.billing.signup_grant_credits
            assert topup.json()["balance"]["posted"] == grant + 50
            users = (await client.get("/api/admin/users", headers=admin)).json()
            assert {u["user"]["username"] for u in users} == {"kate", "root"}
            audit = (await client.get("/api/admin/audit", headers=admin)).json()
            assert audit["clean"] is True

    async def test_api_key_lifecycle(self, server):
        """A created key authenticates; once revoked it is refused."""
        async with server.client() as client:
            headers = await signed_in(client, "liam")
            created = (
                await client.post("/api/keys", json={"name": "laptop"}, headers=headers)
            ).json()
            key_headers = {"Authorization": f"Bearer {created['secret']}"}
            assert (await client.get("/api/me", headers=key_headers)).status_code == 200
            listed = (await client.get("/api/keys", headers=headers)).json()
            assert [k["name"] for k in listed] == ["laptop"]
            assert created["secret"] not in json.dumps(listed)
            revoked = await client.delete(f"/api/keys/{created['key']['id']}", headers=headers)
            assert revoked.status_code == 200
            assert (await client.get("/api/me", headers=key_headers)).status_code == 401


PUBLIC_ROUTES = {
    "/health",
    "/ready",
    "/metrics",
    "/api/auth/register",
    "/api/auth/login",
    "/api/auth/refresh",
    # The key that signs ledger checkpoints: public by design, so anyone can verify a receipt.
    "/api/ledger/public-key",
    "/api/ledger/public-key.pem",
    # A receipt through its signed link: the signature is the credential (test_receipt_links).
    "/api/receipts/{request_id:str}/file",
}


class TestEveryRouteIsProtected:
    async def test_all_api_routes_need_credentials(self, server):
        """Every route of the app except the public ones answers 401 without credentials,
        so a handler cannot forget authentication."""
        checked = set()
        async with server.client() as client:
            for route in server.app.routes:
                path = route.path
                if path in PUBLIC_ROUTES or path.startswith("/schema"):
                    continue
                concrete = path.replace("{user_id:int}", "1").replace("{key_id:int}", "1")
                concrete = concrete.replace("{conversation_id:str}", "x")
                concrete = concrete.replace("{notice_id:int}", "1")
                for method in sorted(route.methods - {"OPTIONS", "HEAD"}):
                    response = await client.request(method, concrete, json={})
                    assert response.status_code == 401, (method, path, response.status_code)
                    checked.add((method, path))
        assert {
            ("POST", "/api/chat"),
            ("POST", "/v1/chat/completions"),
            ("GET", "/v1/models"),
        } <= checked
