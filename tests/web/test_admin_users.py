"""Admin control over users: disabling (API and `ledgerchat user disable`) ends every session
and key at once and is checked on every request and token refresh; enabling lets the user
sign in again with their keys still revoked. Money amounts in top-ups are strict JSON
integers."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.web.web_testing import PASSWORD, login, register
from web.cli import main


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _admin(server: Any, client: httpx.AsyncClient) -> dict[str, str]:
    await server.services.accounts.register("root", "root@example.com", PASSWORD, role="admin")
    return _bearer((await login(client, "root"))["access_token"])


class TestDisable:
    async def test_disable_ends_sessions_and_keys_and_enable_keeps_keys_revoked(
        self, make_server, make_settings, database_url
    ):
        """After POST /api/admin/users/{id}/disable the user's access token, refresh token
        and API key are refused (401) and a correct password gets 403 `account_disabled`;
        after enable the password works again but the old key and refresh token do not.
        On SQLite and PostgreSQL."""
        server = await make_server(make_settings(database_url))
        async with server.client() as client:
            admin = await _admin(server, client)
            user = await register(client, "mallory")
            tokens = await login(client, "mallory")
            key = (
                await client.post(
                    "/api/keys", json={"name": "k"}, headers=_bearer(tokens["access_token"])
                )
            ).json()["secret"]
            disabled = await client.post(f"/api/admin/users/{user['id']}/disable", headers=admin)
            assert disabled.status_code == 200, disabled.text
            assert disabled.json()["disabled"] is True
            assert (
                await client.get("/api/me", headers=_bearer(tokens["access_token"]))
            ).status_code == 401
            assert (await client.get("/api/balance", headers=_bearer(key))).status_code == 401
            refreshed = await client.post(
                "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
            )
            assert refreshed.status_code == 401
            refused = await client.post(
                "/api/auth/login", json={"username": "mallory", "password": PASSWORD}
            )
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "account_disabled"
            users = (await client.get("/api/admin/users", headers=admin)).json()
            assert {u["user"]["username"]: u["user"]["disabled"] for u in users} == {
                "root": False,
                "mallory": True,
            }
            enabled = await client.post(f"/api/admin/users/{user['id']}/enable", headers=admin)
            assert enabled.json()["disabled"] is False
            fresh = await login(client, "mallory")
            assert (
                await client.get("/api/me", headers=_bearer(fresh["access_token"]))
            ).status_code == 200
            assert (await client.get("/api/balance", headers=_bearer(key))).status_code == 401

    async def test_the_mark_alone_stops_live_credentials(self, server):
        """The disabled mark is checked on every request and refresh, not only through the
        revocations: with only `users.disabled_at` set, a live access token, refresh token
        and API key are all refused."""
        async with server.client() as client:
            await register(client, "nina")
            tokens = await login(client, "nina")
            key = (
                await client.post(
                    "/api/keys", json={"name": "k"}, headers=_bearer(tokens["access_token"])
                )
            ).json()["secret"]
            async with server.services.db.begin() as connection:
                await connection.execute(
                    text("UPDATE users SET disabled_at = CURRENT_TIMESTAMP WHERE username = 'nina'")
                )
            assert (
                await client.get("/api/me", headers=_bearer(tokens["access_token"]))
            ).status_code == 401
            assert (await client.get("/api/me", headers=_bearer(key))).status_code == 401
            refreshed = await client.post(
                "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
            )
            assert refreshed.status_code == 401

    async def test_an_admin_cannot_disable_themselves(self, server):
        """Disabling one's own account is refused, so the last admin cannot lock all out."""
        async with server.client() as client:
            admin = await _admin(server, client)
            me = (await client.get("/api/me", headers=admin)).json()
            response = await client.post(f"/api/admin/users/{me['id']}/disable", headers=admin)
            assert response.status_code == 422, response.text

    def test_cli_disable_and_enable(self, cli_env, capsys, monkeypatch):
        """`ledgerchat user disable NAME` revokes the user's keys and blocks sign-in;
        `ledgerchat user enable NAME` lifts the block; an unknown name exits 2."""
        import asyncio

        from web.errors import AccountDisabled, NotAuthenticated
        from web.services import Services
        from web.settings import load_settings

        monkeypatch.setattr("sys.stdin", io.StringIO("user pass 123\n"))
        main(["user", "create", "oscar", "--email", "o@example.com", "--password-stdin"])
        main(["key", "create", "oscar"])
        secret = capsys.readouterr().out.strip().splitlines()[-1]
        assert main(["user", "disable", "oscar"]) == 0
        assert "disabled oscar" in capsys.readouterr().out

        async def check(expect_disabled: bool) -> None:
            services = Services(load_settings(), start_engine=False, start_background_jobs=False)
            await services.start()
            try:
                with pytest.raises(NotAuthenticated):
                    await services.api_keys.authenticate(secret)
                if expect_disabled:
                    with pytest.raises(AccountDisabled):
                        await services.accounts.login("oscar", "user pass 123", "cli-test")
                else:
                    assert await services.accounts.login("oscar", "user pass 123", "cli-test")
            finally:
                await services.close()

        asyncio.run(check(expect_disabled=True))
        assert main(["user", "enable", "oscar"]) == 0
        asyncio.run(check(expect_disabled=False))
        assert main(["user", "disable", "nobody"]) == 2


class TestStrictAmounts:
    @pytest.mark.parametrize("amount", ["10", 10.0, True, "ten", 10.5])
    async def test_top_up_amount_must_be_a_json_integer(self, server, amount):
        """`"10"`, `10.0` and `true` are not credits: 400/422 and the balance is unchanged;
        the integer 10 is accepted."""
        async with server.client() as client:
            admin = await _admin(server, client)
            user = await register(client, "petra")
            url = f"/api/admin/users/{user['id']}/credits"
            refused = await client.post(
                url, json={"amount": amount}, headers={**admin, "Idempotency-Key": "s-1"}
            )
            assert refused.status_code in (400, 422), refused.text
            assert refused.json()["error"]["code"] == "validation_failed"
            accepted = await client.post(
                url, json={"amount": 10}, headers={**admin, "Idempotency-Key": "s-2"}
            )
            assert accepted.status_code == 200, accepted.text
            grant = server.services.settings.billing.signup_grant_credits
            assert accepted.json()["balance"]["posted"] == grant + 10
