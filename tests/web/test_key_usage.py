"""Usage per API key for admins (GET /api/admin/usage/keys, `ledgerchat usage --by key`, the
admin page): each answered reply is recorded with the key that asked for it, so requests,
tokens and credits per day, key and model are exactly those of the chats made with each key,
a signed-in session's replies are their own keyless line, and the totals equal the per-user
report's."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
from typing import Any

import pytest

from tests.web.web_testing import PASSWORD, chat, login, signed_in
from web.cli import main
from web.domain.admin.usage_keys import NO_KEY_LABEL
from web.ui.admin_billing import BY_KEY, AdminBilling
from web.ui.session import UISession

pytestmark = pytest.mark.slow


async def _key(client: Any, headers: dict[str, str], name: str) -> tuple[int, dict[str, str]]:
    created = await client.post("/api/keys", json={"name": name}, headers=headers)
    assert created.status_code == 201, created.text
    body = created.json()
    return body["key"]["id"], {"Authorization": f"Bearer {body['secret']}"}


async def _chats(client: Any, headers: dict[str, str], count: int) -> list[dict[str, Any]]:
    done = []
    for index in range(count):
        sampling = {"max_tokens": 3 + index, "temperature": 0}
        status, events, error = await chat(client, headers, f"Hi {index}", sampling=sampling)
        assert status == 200, error
        done.append(events[-1].data)
    return done


def _sums(chats: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "requests": len(chats),
        "prompt_tokens": sum(c["prompt_tokens"] for c in chats),
        "completion_tokens": sum(c["completion_tokens"] for c in chats),
        "credits": sum(c["cost_credits"] for c in chats),
    }


async def _admin(server: Any, client: Any) -> tuple[dict[str, str], UISession]:
    accounts = server.services.accounts
    await accounts.register("root", "root@example.com", PASSWORD, role="admin")
    headers = {"Authorization": f"Bearer {(await login(client, 'root'))['access_token']}"}
    tokens = await accounts.login("root", PASSWORD, "127.0.0.1")
    session = UISession()
    session.start(tokens, await accounts.identity_from_access_token(tokens.access_token))
    return headers, session


class TestKeyUsage:
    async def test_each_key_reports_exactly_its_chats(
        self, make_server, make_settings, database_url
    ):
        """Two keys of one user, that user's session and another user's session: each line's
        requests, tokens and credits are the sums of those chats' final events; the totals
        equal the per-user report's; `key=` and `user=` narrow; unknown key 404, a user 403;
        the CSV escapes a key name that looks like a formula. SQLite and PostgreSQL."""
        server = await make_server(make_settings(database_url))
        async with server.client() as client:
            admin, session = await _admin(server, client)
            alice = await signed_in(client, "alice")
            bob = await signed_in(client, "bob")
            first_id, first = await _key(client, alice, "laptop")
            second_id, second = await _key(client, alice, "=SUM(1)")
            made = {
                first_id: await _chats(client, first, 2),
                second_id: await _chats(client, second, 1),
                "alice": await _chats(client, alice, 1),
                "bob": await _chats(client, bob, 1),
            }
            report = (await client.get("/api/admin/usage/keys", headers=admin)).json()
            per_user = (await client.get("/api/admin/usage", headers=admin)).json()
            only_first = (
                await client.get("/api/admin/usage/keys", headers=admin, params={"key": first_id})
            ).json()
            only_bob = (
                await client.get("/api/admin/usage/keys", headers=admin, params={"user": "bob"})
            ).json()
            as_csv = await client.get(
                "/api/admin/usage/keys", headers=admin, params={"format": "csv"}
            )
            unknown = await client.get(
                "/api/admin/usage/keys", headers=admin, params={"key": 999_999}
            )
            refused = await client.get("/api/admin/usage/keys", headers=alice)
        page_table, _ = await AdminBilling(server.services).usage(session, "", BY_KEY)

        lines = {
            (k["key_id"] if k["key_id"] is not None else k["username"]): k for k in report["keys"]
        }
        assert set(lines) == set(made)
        for owner, chats in made.items():
            assert {name: lines[owner][name] for name in _sums(chats)} == _sums(chats), owner
        assert lines[first_id]["key_name"] == "laptop" and lines[first_id]["username"] == "alice"
        assert lines["alice"]["key_id"] is None and lines["alice"]["key_name"] is None
        today = dt.datetime.now(dt.UTC).date().isoformat()
        assert {row["day"] for row in report["rows"]} == {today}
        for total in ("requests", "prompt_tokens", "completion_tokens", "credits"):
            assert report[f"total_{total}"] == per_user[f"total_{total}"], total
        assert [k["key_id"] for k in only_first["keys"]] == [first_id]
        assert only_first["total_credits"] == _sums(made[first_id])["credits"]
        assert [(k["username"], k["key_id"]) for k in only_bob["keys"]] == [("bob", None)]
        assert unknown.status_code == 404 and refused.status_code == 403

        rows = list(csv.reader(io.StringIO(as_csv.text)))
        assert as_csv.headers["content-type"].startswith("text/csv")
        assert rows[0][:3] == ["day", "key_id", "key_name"]
        assert "'=SUM(1)" in [row[2] for row in rows] and NO_KEY_LABEL in [r[2] for r in rows]
        assert rows[-1][0] == "total" and int(rows[-1][-1]) == report["total_credits"]
        shown = page_table.value["data"]
        assert shown[-1][0] == "total", page_table.value
        assert int(shown[-1][-1]) == report["total_credits"]

    async def test_cli_by_key(self, cli_env, make_server, make_settings, capsys):
        """`ledgerchat usage --by key --format json` reports what the API does; `--key`
        without `--by key` is a usage error (exit 2)."""
        server = await make_server(make_settings(cli_env))
        async with server.client() as client:
            user = await signed_in(client, "cliuser")
            key_id, key = await _key(client, user, "script")
            chats = await _chats(client, key, 2)
        argv = ["usage", "--by", "key", "--key", str(key_id), "--format", "json"]
        assert await asyncio.to_thread(main, argv) == 0
        out = capsys.readouterr().out
        report = json.loads(out[out.index("{\n") :])
        assert [k["key_id"] for k in report["keys"]] == [key_id]
        assert report["total_credits"] == _sums(chats)["credits"]
        assert await asyncio.to_thread(main, ["usage", "--by", "key"]) == 0
        assert "script" in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["usage", "--key", str(key_id)]) == 2
