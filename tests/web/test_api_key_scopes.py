"""What an API key may do. By default a key chats and reads (`/v1`, balance, usage, /api/me);
key management, logout and admin routes need a signed-in session, so a leaked key cannot mint
keys that outlive its revocation, sign its owner out everywhere, or top up credits."""

from __future__ import annotations

import io
from typing import Any

import httpx

from tests.web.conftest import TINY
from tests.web.web_testing import PASSWORD, login, signed_in
from web.cli import main


async def _key(
    client: httpx.AsyncClient, headers: dict[str, str], **body: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    response = await client.post("/api/keys", json={"name": "k", **body}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created, {"Authorization": f"Bearer {created['secret']}"}


def _denied(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "permission_denied"


class TestDefaultScopes:
    async def test_a_key_reads_and_chats_but_cannot_manage_keys_or_sign_out(self, server):
        """A default key (`chat read`) lists models, reads balance, usage and /api/me and
        completes a chat on /v1; it gets 403 from /api/keys (create, list, revoke) and from
        logout, and the owner's session survives its logout attempt."""
        async with server.client() as client:
            session = await signed_in(client, "ada")
            created, key = await _key(client, session)
            assert created["key"]["scopes"] == ["chat", "read"]
            for path in ("/v1/models", "/api/balance", "/api/usage", "/api/me"):
                response = await client.get(path, headers=key)
                assert response.status_code == 200, (path, response.text)
            completion = await client.post(
                "/v1/chat/completions",
                json={"model": TINY, "messages": [{"role": "user", "content": "Hi"}]},
                headers={**key, "Idempotency-Key": "scoped-1"},
            )
            assert completion.status_code == 200, completion.text
            _denied(await client.post("/api/keys", json={"name": "minted"}, headers=key))
            _denied(await client.get("/api/keys", headers=key))
            _denied(await client.delete(f"/api/keys/{created['key']['id']}", headers=key))
            _denied(await client.post("/api/auth/logout", headers=key))
            assert (await client.get("/api/me", headers=session)).status_code == 200
            listed = (await client.get("/api/keys", headers=session)).json()
            assert [k["name"] for k in listed] == ["k"]

    async def test_a_key_cannot_change_conversations_without_write(self, server):
        """Renaming or deleting a conversation is a `write`: a default key gets 403."""
        async with server.client() as client:
            session = await signed_in(client, "bea")
            _, key = await _key(client, session)
            _denied(await client.patch("/api/conversations/x", json={"title": "t"}, headers=key))
            _denied(await client.delete("/api/conversations/x", headers=key))

    async def test_an_admins_key_cannot_act_as_admin(self, server):
        """An admin's API key gets 403 from every admin route; the admin's session works."""
        async with server.client() as client:
            await server.services.accounts.register(
                "root", "root@example.com", PASSWORD, role="admin"
            )
            session = {"Authorization": f"Bearer {(await login(client, 'root'))['access_token']}"}
            _, key = await _key(client, session, scopes=["chat", "read", "write"])
            _denied(
                await client.post(
                    "/api/admin/users/1/credits",
                    json={"amount": 5},
                    headers={**key, "Idempotency-Key": "k-topup"},
                )
            )
            _denied(await client.get("/api/admin/users", headers=key))
            _denied(await client.post("/api/admin/invites", json={}, headers=key))
            assert (await client.get("/api/admin/users", headers=session)).status_code == 200


class TestChosenScopes:
    async def test_a_read_only_key_cannot_chat(self, server):
        """A key made with `scopes: ["read"]` reads but gets 403 naming the `chat` scope."""
        async with server.client() as client:
            session = await signed_in(client, "cyd")
            created, key = await _key(client, session, scopes=["read"])
            assert created["key"]["scopes"] == ["read"]
            assert (await client.get("/api/balance", headers=key)).status_code == 200
            refused = await client.post(
                "/v1/chat/completions",
                json={"model": TINY, "messages": [{"role": "user", "content": "Hi"}]},
                headers={**key, "Idempotency-Key": "ro-1"},
            )
            _denied(refused)
            assert refused.json()["error"]["details"]["scope"] == "chat"
            refused_chat = await client.post(
                "/api/chat", json={"message": "Hi"}, headers={**key, "Idempotency-Key": "ro-2"}
            )
            _denied(refused_chat)

    async def test_unknown_scopes_are_refused(self, server):
        """Scopes outside chat/read/write, or an empty list, are a validation error."""
        async with server.client() as client:
            session = await signed_in(client, "deedee")
            for scopes in (["admin"], []):
                response = await client.post(
                    "/api/keys", json={"name": "x", "scopes": scopes}, headers=session
                )
                assert response.status_code in (400, 422), response.text

    def test_cli_keys_get_the_scopes_asked_for(self, cli_env, capsys, monkeypatch):
        """`ledgerchat key create --scope read` makes a key that may read and not chat."""
        import asyncio

        from web.services import Services
        from web.settings import load_settings

        monkeypatch.setattr("sys.stdin", io.StringIO("user pass 123\n"))
        main(["user", "create", "eve", "--email", "e@example.com", "--password-stdin"])
        capsys.readouterr()
        assert main(["key", "create", "eve", "--scope", "read"]) == 0
        secret = capsys.readouterr().out.strip()

        async def scopes() -> tuple[str, ...]:
            services = Services(load_settings(), start_engine=False, start_background_jobs=False)
            await services.start()
            try:
                return (await services.api_keys.authenticate(secret)).scopes
            finally:
                await services.close()

        assert asyncio.run(scopes()) == ("read",)
