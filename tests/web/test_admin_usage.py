"""Usage for admins (GET /api/admin/usage, `ledgerchat usage`): requests, tokens and credits
per UTC day, user and model, with totals, exactly those of the chats made; CSV cells a
spreadsheet would run as formulas are escaped."""

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
from web.domain.admin.usage import AdminUsageReport, AdminUsageRow, usage_csv

pytestmark = pytest.mark.slow


async def _chats(client: Any, headers: dict[str, str], count: int) -> list[dict[str, Any]]:
    done = []
    for index in range(count):
        status, events, error = await chat(
            client, headers, f"Hello {index}", sampling={"max_tokens": 4 + index, "temperature": 0}
        )
        assert status == 200, error
        done.append(events[-1].data)
    return done


class TestAdminUsage:
    async def test_numbers_match_the_chats_made(self, make_server, make_settings, database_url):
        """Per user: requests, prompt and completion tokens and credits equal the sums of the
        chats' final events; totals add up; `user=` narrows; non-admins get 403; CSV carries
        the same figures with a total line. SQLite and PostgreSQL."""
        server = await make_server(make_settings(database_url))
        async with server.client() as client:
            await server.services.accounts.register(
                "root", "root@example.com", PASSWORD, role="admin"
            )
            admin = {"Authorization": f"Bearer {(await login(client, 'root'))['access_token']}"}
            alice = await signed_in(client, "alice")
            bob = await signed_in(client, "bob")
            made = {"alice": await _chats(client, alice, 3), "bob": await _chats(client, bob, 2)}
            today = dt.datetime.now(dt.UTC).date().isoformat()

            report = (await client.get("/api/admin/usage", headers=admin)).json()
            by_user = {row["username"]: row for row in report["rows"]}
            assert set(by_user) == {"alice", "bob"}
            for name, chats in made.items():
                row = by_user[name]
                assert row["day"] == today and row["model"] == chats[0]["model_answered"]
                assert row["requests"] == len(chats)
                assert row["prompt_tokens"] == sum(c["prompt_tokens"] for c in chats)
                assert row["completion_tokens"] == sum(c["completion_tokens"] for c in chats)
                assert row["credits"] == sum(c["cost_credits"] for c in chats)
            every = [c for chats in made.values() for c in chats]
            assert report["total_requests"] == 5
            assert report["total_credits"] == sum(c["cost_credits"] for c in every)
            assert report["total_completion_tokens"] == sum(c["completion_tokens"] for c in every)

            only_bob = (
                await client.get("/api/admin/usage", headers=admin, params={"user": "bob"})
            ).json()
            assert [row["username"] for row in only_bob["rows"]] == ["bob"]
            assert only_bob["total_credits"] == by_user["bob"]["credits"]

            as_csv = await client.get("/api/admin/usage", headers=admin, params={"format": "csv"})
            assert as_csv.headers["content-type"].startswith("text/csv")
            lines = list(csv.reader(io.StringIO(as_csv.text)))
            assert lines[0][:3] == ["day", "username", "model"]
            assert lines[-1][0] == "total" and int(lines[-1][6]) == report["total_credits"]

            refused = await client.get("/api/admin/usage", headers=alice)
            assert refused.status_code == 403
            unknown = await client.get("/api/admin/usage", headers=admin, params={"user": "nobody"})
            assert unknown.status_code == 404
            old = {"since": "2020-01-01", "until": "2020-01-31"}
            empty = (await client.get("/api/admin/usage", headers=admin, params=old)).json()
            assert empty["rows"] == [] and empty["total_credits"] == 0

    async def test_cli_prints_the_same_figures(self, cli_env, make_server, make_settings, capsys):
        """`ledgerchat usage --format json` reports what the API does; a bad date is exit 2."""
        server = await make_server(make_settings(cli_env))
        async with server.client() as client:
            chats = await _chats(client, await signed_in(client, "cliuser"), 2)
        assert await asyncio.to_thread(main, ["usage", "--format", "json"]) == 0
        out = capsys.readouterr().out
        # The live server in this process may log to the captured stdout too: the report is
        # the indented JSON object.
        report = json.loads(out[out.index("{\n") :])
        assert report["total_requests"] == 2
        assert report["total_credits"] == sum(c["cost_credits"] for c in chats)
        assert await asyncio.to_thread(main, ["usage", "--user", "cliuser"]) == 0
        assert "cliuser" in capsys.readouterr().out
        with pytest.raises(SystemExit) as exited:
            main(["usage", "--since", "yesterday"])
        assert exited.value.code == 2


def test_csv_cells_that_look_like_formulas_are_escaped():
    """A user name or model that starts with = + - @ is written with a leading quote."""
    row = AdminUsageRow("2026-11-30", 1, "=HYPERLINK(1)", "@sum", 1, 2, 3, 4)
    report = AdminUsageReport("2026-11-30", "2026-11-30", None, [row], 1, 2, 3, 4)
    lines = list(csv.reader(io.StringIO(usage_csv(report))))
    assert lines[1][1] == "'=HYPERLINK(1)" and lines[1][2] == "'@sum"
    assert lines[1][3:] == ["1", "2", "3", "4"]
