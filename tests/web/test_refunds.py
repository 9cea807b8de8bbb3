"""Refunds of a reply by an admin (POST /api/admin/refunds, `ledgerchat refund`): partial and
full, never more than the capture took minus earlier refunds, the actor and reason recorded,
idempotent, and shown to the user in their history naming the reply."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.web.web_testing import PASSWORD, chat, login, signed_in
from web.cli import main

pytestmark = pytest.mark.slow
GREEDY = {"max_tokens": 8, "temperature": 0}


async def _admin(server: Any, client: httpx.AsyncClient) -> dict[str, str]:
    await server.services.accounts.register("root", "root@example.com", PASSWORD, role="admin")
    return {"Authorization": f"Bearer {(await login(client, 'root'))['access_token']}"}


async def _reply(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    status, events, error = await chat(client, headers, "Hello", sampling=GREEDY)
    assert status == 200, error
    done: dict[str, Any] = events[-1].data
    assert done["cost_credits"] >= 2, done
    return done


async def _refund(
    client: httpx.AsyncClient, headers: dict[str, str], key: str, **body: Any
) -> httpx.Response:
    return await client.post(
        "/api/admin/refunds", json=body, headers={**headers, "Idempotency-Key": key}
    )


class TestRefundApi:
    async def test_partial_then_full_then_over_refund_refused(
        self, make_server, make_settings, database_url
    ):
        """A partial refund gives back its credits; a refund without `credits` gives back the
        rest; any further refund is 409 `refund_exceeds_taken` and changes nothing. The
        ledger events carry the actor, the reason and the request id. SQLite and PostgreSQL."""
        server = await make_server(make_settings(database_url))
        async with server.client() as client:
            admin = await _admin(server, client)
            user = await signed_in(client, "payer")
            done = await _reply(client, user)
            cost, request_id = done["cost_credits"], done["request_id"]
            posted = done["balance"]["posted"]

            part = await _refund(
                client, admin, "r1", request_id=request_id, credits=1, reason="slow"
            )
            assert part.status_code == 200, part.text
            body = part.json()
            assert (body["credits"], body["captured"], body["refunded_total"]) == (1, cost, 1)
            assert body["balance"]["posted"] == posted + 1 and body["replayed"] is False

            again = await _refund(
                client, admin, "r1", request_id=request_id, credits=1, reason="slow"
            )
            assert again.status_code == 200 and again.json()["replayed"] is True
            assert again.json()["balance"]["posted"] == posted + 1

            rest = await _refund(client, admin, "r2", request_id=request_id, reason="bad answer")
            assert rest.status_code == 200, rest.text
            assert rest.json()["credits"] == cost - 1
            assert rest.json()["refunded_total"] == cost
            assert rest.json()["balance"]["posted"] == posted + cost

            for key, extra in (("r3", {"credits": 1}), ("r4", {})):
                over = await _refund(client, admin, key, request_id=request_id, reason="x", **extra)
                assert over.status_code == 409, over.text
                assert over.json()["error"]["code"] == "refund_exceeds_taken"
            balance = (await client.get("/api/balance", headers=user)).json()
            assert balance["posted"] == posted + cost

            me = (await client.get("/api/me", headers=user)).json()
            page = await server.services.ledger.history(me["account_id"], types=["refunded"])
            assert [e.amount for e in page.entries] == [cost - 1, 1]
            assert {e.reason for e in page.entries} == {"slow", "bad answer"}
            for entry in page.entries:
                assert entry.metadata["actor"] == "root"
                assert entry.metadata["request_id"] == request_id

    async def test_over_refund_in_one_go_is_refused(self, server):
        """More credits than the reply's capture took is refused, whatever came before."""
        async with server.client() as client:
            admin = await _admin(server, client)
            done = await _reply(client, await signed_in(client, "once"))
            over = await _refund(
                client,
                admin,
                "big",
                request_id=done["request_id"],
                credits=done["cost_credits"] + 1,
                reason="too much",
            )
            assert over.status_code == 409, over.text
            details = over.json()["error"]["details"]
            assert details["taken"] == done["cost_credits"] and details["refunded"] == 0

    async def test_non_admin_and_unknown_request_are_refused(self, server):
        """A user (even refunding their own reply) gets 403; an admin's API key gets 403; an
        unknown request id is 404; a missing reason is 422."""
        async with server.client() as client:
            admin = await _admin(server, client)
            user = await signed_in(client, "sneaky")
            done = await _reply(client, user)
            mine = await _refund(client, user, "k", request_id=done["request_id"], reason="me")
            assert mine.status_code == 403
            key = (await client.post("/api/keys", json={"name": "k"}, headers=admin)).json()
            by_key = await _refund(
                client,
                {"Authorization": f"Bearer {key['secret']}"},
                "k2",
                request_id=done["request_id"],
                reason="key",
            )
            assert by_key.status_code == 403
            unknown = await _refund(client, admin, "k3", request_id="no-such-request", reason="x")
            assert unknown.status_code == 404
            no_reason = await _refund(client, admin, "k4", request_id=done["request_id"])
            assert no_reason.status_code in (400, 422)
            balance = (await client.get("/api/balance", headers=user)).json()
            assert balance["posted"] == done["balance"]["posted"]

    async def test_the_user_sees_the_refund_naming_the_reply(
        self, make_server, make_settings, database_url
    ):
        """GET /api/history shows a `refund` item with the credits, the reason and the
        reply's request id and model, above the reply itself. SQLite and PostgreSQL."""
        server = await make_server(make_settings(database_url))
        async with server.client() as client:
            admin = await _admin(server, client)
            user = await signed_in(client, "viewer")
            done = await _reply(client, user)
            made = await _refund(
                client, admin, "v1", request_id=done["request_id"], credits=1, reason="goodwill"
            )
            assert made.status_code == 200, made.text
            history = (await client.get("/api/history", headers=user)).json()["items"]
            refund, reply = history[0], history[1]
            assert refund["kind"] == "refund" and refund["amount"] == 1
            assert refund["reason"] == "goodwill"
            assert refund["request_id"] == done["request_id"] == reply["request_id"]
            assert refund["model"] == done["model_answered"]


class TestRefundCli:
    async def test_exit_codes(self, cli_env, make_server, make_settings, capsys):
        """`ledgerchat refund` exits 0 when it refunds, 1 when the ledger refuses the amount,
        2 for an unknown request id or a bad --credits."""
        server = await make_server(make_settings(cli_env))
        async with server.client() as client:
            done = await _reply(client, await signed_in(client, "clipayer"))
        request_id, cost = done["request_id"], done["cost_credits"]

        def run(*argv: str) -> int:
            return main(["refund", *argv])

        assert await asyncio.to_thread(run, request_id, "--credits", "1", "--reason", "cli") == 0
        assert "refunded 1 of" in capsys.readouterr().out
        over = str(cost)
        assert await asyncio.to_thread(run, request_id, "--credits", over, "--reason", "x") == 1
        assert "refused" in capsys.readouterr().err
        assert await asyncio.to_thread(run, request_id, "--reason", "rest") == 0
        assert await asyncio.to_thread(run, request_id, "--reason", "again") == 1
        assert await asyncio.to_thread(run, "no-such-request", "--reason", "x") == 2
        assert await asyncio.to_thread(run, request_id, "--credits", "0", "--reason", "x") == 2
        balance = await server.services.billing.balance_of(
            (await server.services.accounts.find_user("clipayer")).account_id
        )
        assert balance.posted == done["balance"]["posted"] + cost


class TestAdminPageRefund:
    async def test_the_form_refunds_once_and_refuses_bad_input(self, server):
        """The admin page's form refunds through the admin service (its key makes a double
        click refund once); an empty reason is refused before any ledger call; the usage table
        ends with the totals."""
        from web.ui.admin_billing import AdminBilling
        from web.ui.session import UISession

        services = server.services
        async with server.client() as client:
            done = await _reply(client, await signed_in(client, "formuser"))
        await services.accounts.register("root", "root@example.com", PASSWORD, role="admin")
        tokens = await services.accounts.login("root", PASSWORD, "127.0.0.1")
        session = UISession()
        session.start(
            tokens, await services.accounts.identity_from_access_token(tokens.access_token)
        )
        page = AdminBilling(services)
        notice, key = await page.refund(session, done["request_id"], None, "  ", "form-1")
        assert "reason" in notice and key == "form-1"
        notice, new_key = await page.refund(session, done["request_id"], 1, "page", "form-1")
        assert "Refunded 1 credit" in notice and new_key != "form-1"
        notice, _ = await page.refund(session, done["request_id"], 1, "page", "form-1")
        account = (await services.accounts.find_user("formuser")).account_id
        refunds = await services.ledger.history(account, types=["refunded"])
        assert [entry.amount for entry in refunds.entries] == [1]
        too_much = done["cost_credits"]
        notice, _ = await page.refund(session, done["request_id"], too_much, "x", "form-2")
        assert "exceeds" in notice
        table, _ = await page.usage(session, "")
        # The table comes with its headers (per user or per key): its value holds the rows.
        rows = table.value["data"]
        assert rows[-1][0] == "total" and rows[-1][6] == done["cost_credits"]
