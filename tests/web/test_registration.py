"""Who may register: the registration mode (`open`, `invite` with single-use codes an admin
makes, `closed`), the per-address signup limit, a signup grant of 0, and invites made with
`ledgerchat invite create`. The single-use and limit rules hold under concurrency on SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.web.web_testing import PASSWORD, login
from web.cli import main
from web.errors import InviteInvalid

CONCURRENT = 8


def _body(username: str, **extra: Any) -> dict[str, Any]:
    return {
        "username": username,
        "email": f"{username}@example.com",
        "password": PASSWORD,
        **extra,
    }


async def _admin_headers(server: Any, client: httpx.AsyncClient) -> dict[str, str]:
    await server.services.accounts.register("root", "root@example.com", PASSWORD, role="admin")
    return {"Authorization": f"Bearer {(await login(client, 'root'))['access_token']}"}


async def _invite(client: httpx.AsyncClient, admin: dict[str, str], **body: Any) -> str:
    response = await client.post("/api/admin/invites", json=body, headers=admin)
    assert response.status_code == 201, response.text
    code: str = response.json()["code"]
    return code


class TestClosed:
    async def test_closed_mode_refuses_every_registration(self, make_server, make_settings):
        """With registration closed, /api/auth/register answers 403 `registration_closed`
        and no user is made; the CLI still creates users."""
        server = await make_server(make_settings(LEDGERCHAT_AUTH_REGISTRATION_MODE="closed"))
        async with server.client() as client:
            response = await client.post("/api/auth/register", json=_body("nora"))
            assert response.status_code == 403, response.text
            assert response.json()["error"]["code"] == "registration_closed"
            assert await server.services.accounts.list_users() == []
            await server.services.accounts.register("ops", "ops@example.com", PASSWORD)
            assert (await login(client, "ops"))["access_token"]


class TestInvites:
    async def test_invite_mode_needs_a_valid_unused_code(self, make_server, make_settings):
        """In invite mode a registration without a code, with an unknown code, or with a
        code already used is refused (403 `invite_invalid`); a fresh code admits one user."""
        server = await make_server(make_settings(LEDGERCHAT_AUTH_REGISTRATION_MODE="invite"))
        async with server.client() as client:
            admin = await _admin_headers(server, client)
            code = await _invite(client, admin)
            for body in (_body("olga"), _body("olga", invite_code="not-a-code")):
                refused = await client.post("/api/auth/register", json=body)
                assert refused.status_code == 403, refused.text
                assert refused.json()["error"]["code"] == "invite_invalid"
            admitted = await client.post("/api/auth/register", json=_body("olga", invite_code=code))
            assert admitted.status_code == 201, admitted.text
            again = await client.post("/api/auth/register", json=_body("pete", invite_code=code))
            assert again.status_code == 403
            listed = (await client.get("/api/admin/invites", headers=admin)).json()
            assert [invite["used_by"] for invite in listed] == [admitted.json()["id"]]
            assert code not in str(listed)

    async def test_a_registration_undone_gives_its_code_back(self, make_server, make_settings):
        """When the ledger cannot open the new user's account the registration is undone,
        and so is the spending of its invite: the same code then admits the retry."""
        server = await make_server(make_settings(LEDGERCHAT_AUTH_REGISTRATION_MODE="invite"))
        ledger = server.services.ledger
        real_open = ledger.open_account
        calls: list[int] = []

        async def open_fails_once(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("simulated: the ledger went away")
            return await real_open(*args, **kwargs)

        async with server.client() as client:
            admin = await _admin_headers(server, client)
            code = await _invite(client, admin)
            ledger.open_account = open_fails_once
            failed = await client.post("/api/auth/register", json=_body("quinn", invite_code=code))
            assert failed.status_code == 500, failed.text
            retried = await client.post("/api/auth/register", json=_body("quinn", invite_code=code))
            assert retried.status_code == 201, retried.text
            listed = (await client.get("/api/admin/invites", headers=admin)).json()
            assert [invite["used_by"] for invite in listed] == [retried.json()["id"]]

    async def test_a_code_is_spent_once_under_concurrency(
        self, make_server, make_settings, database_url
    ):
        """Concurrent registrations with one code: exactly one account is made, the others
        get 403, on SQLite and PostgreSQL."""
        server = await make_server(
            make_settings(database_url, LEDGERCHAT_AUTH_REGISTRATION_MODE="invite")
        )
        async with server.client() as client:
            admin = await _admin_headers(server, client)
            code = await _invite(client, admin)
            responses = await asyncio.gather(
                *(
                    client.post("/api/auth/register", json=_body(f"racer{i}", invite_code=code))
                    for i in range(CONCURRENT)
                )
            )
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [201] + [403] * (CONCURRENT - 1), [r.text for r in responses]
        assert len(await server.services.accounts.list_users()) == 2  # root and the winner

    async def test_an_expired_code_is_refused(self, make_server, make_settings):
        """A code past its expiry admits nobody."""
        server = await make_server(make_settings(LEDGERCHAT_AUTH_REGISTRATION_MODE="invite"))
        async with server.client() as client:
            admin = await _admin_headers(server, client)
            code = await _invite(client, admin, expires_in_s=1)
            await asyncio.sleep(2.0)  # well past the 1 s lifetime
            response = await client.post(
                "/api/auth/register", json=_body("quinn", invite_code=code)
            )
            assert response.status_code == 403, response.text
            assert response.json()["error"]["code"] == "invite_invalid"

    def test_an_invite_from_the_cli_admits_one_user(self, cli_env, capsys, monkeypatch):
        """`ledgerchat invite create` prints a code that registration then accepts once."""
        capsys.readouterr()
        assert main(["invite", "create", "--expires-in-hours", "2", "--note", "for rita"]) == 0
        code = capsys.readouterr().out.strip()
        assert len(code) >= 20

        from web.services import Services
        from web.settings import load_settings

        async def sign_up(name: str) -> str:
            settings = load_settings()
            services = Services(settings, start_engine=False, start_background_jobs=False)
            await services.start()
            try:
                user = await services.registration.sign_up(
                    name, f"{name}@example.com", PASSWORD, invite_code=code, client_address="x"
                )
                return user.username
            finally:
                await services.close()

        monkeypatch.setenv("LEDGERCHAT_AUTH_REGISTRATION_MODE", "invite")
        assert asyncio.run(sign_up("rita")) == "rita"
        with pytest.raises(InviteInvalid):
            asyncio.run(sign_up("sam"))


class TestSignupLimit:
    async def test_one_address_gets_its_quota_then_429(self, make_server, make_settings):
        """Beyond LEDGERCHAT_AUTH_SIGNUPS_PER_ADDRESS_PER_HOUR registrations an address gets
        429 with Retry-After; a refused password does not use up the quota."""
        server = await make_server(make_settings(LEDGERCHAT_AUTH_SIGNUPS_PER_ADDRESS_PER_HOUR="2"))
        async with server.client() as client:
            weak = await client.post("/api/auth/register", json={**_body("tom"), "password": "x"})
            assert weak.status_code == 422
            for name in ("tom", "uma"):
                response = await client.post("/api/auth/register", json=_body(name))
                assert response.status_code == 201, response.text
            limited = await client.post("/api/auth/register", json=_body("vic"))
            assert limited.status_code == 429, limited.text
            assert limited.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(limited.headers["retry-after"]) <= 3600

    async def test_concurrent_registrations_cannot_overrun_the_limit(
        self, make_server, make_settings, database_url
    ):
        """A burst of registrations from one address makes at most the limit's accounts (and
        mints at most that many signup grants), on SQLite and PostgreSQL. Requests that meet
        in the count may all be refused (that errs on the safe side), but a refused one does
        not use up the quota: one at a time, the address then gets exactly the rest."""
        server = await make_server(
            make_settings(database_url, LEDGERCHAT_AUTH_SIGNUPS_PER_ADDRESS_PER_HOUR="3")
        )
        async with server.client() as client:
            responses = await asyncio.gather(
                *(
                    client.post("/api/auth/register", json=_body(f"burst{i}"))
                    for i in range(CONCURRENT)
                )
            )
            assert all(r.status_code in (201, 429) for r in responses), [r.text for r in responses]
            created = sum(r.status_code == 201 for r in responses)
            assert created <= 3, [r.status_code for r in responses]
            for i in range(3 - created):
                late = await client.post("/api/auth/register", json=_body(f"late{i}"))
                assert late.status_code == 201, late.text
            refused = await client.post("/api/auth/register", json=_body("onemore"))
            assert refused.status_code == 429, refused.text
        assert len(await server.services.accounts.list_users()) == 3


class TestSignupGrant:
    async def test_a_grant_of_zero_mints_nothing(self, make_server, make_settings):
        """With LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS=0 a new account starts at 0 and its
        ledger holds no grant event."""
        server = await make_server(make_settings(LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS="0"))
        async with server.client() as client:
            created = await client.post("/api/auth/register", json=_body("wendy"))
            assert created.status_code == 201, created.text
            tokens = await login(client, "wendy")
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            balance = (await client.get("/api/balance", headers=headers)).json()
            assert balance["posted"] == 0
            page = (await client.get("/api/transactions", headers=headers)).json()
            assert page["transactions"] == []
