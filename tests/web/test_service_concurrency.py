"""Many chats at once from one user whose credits cover only some of them: the balance never
goes negative, every hold is resolved, and the ledger audit is clean afterwards."""

from __future__ import annotations

import asyncio

import pytest

from tests.web.web_testing import chat, signed_in

pytestmark = pytest.mark.slow

CONCURRENT_CHATS = 20


class TestConcurrentChats:
    async def test_twenty_chats_with_credits_for_some(
        self, make_server, make_settings, database_url
    ):
        """20 simultaneous chats, each holding its worst case, with credits for only a few
        holds at a time: some get 402, the rest are charged exactly, the posted balance equals
        the grant minus the charges, nothing stays held, and the audit is clean."""
        grant = 20
        server = await make_server(
            make_settings(database_url, LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS=str(grant))
        )
        await server.services.engine.load("tiny")
        async with server.client() as client:
            headers = await signed_in(client, "many")
            results = await asyncio.gather(
                *(
                    chat(client, headers, f"question {i}", sampling={"max_tokens": 30})
                    for i in range(CONCURRENT_CHATS)
                )
            )
            statuses = [status for status, _, _ in results]
            errors = [body for status, _, body in results if status != 200]
            assert set(statuses) <= {200, 402}, errors
            assert statuses.count(402) >= 1 and statuses.count(200) >= 1
            charged = sum(
                events[-1].data["cost_credits"] for status, events, _ in results if status == 200
            )
            for status, events, _ in results:
                if status == 200:
                    assert events[-1].event == "done", events[-1]
                    assert events[-1].data["balance"]["available"] >= 0
            balance = (await client.get("/api/balance", headers=headers)).json()
            assert balance["held"] == 0
            assert balance["posted"] == grant - charged >= 0
        report = await server.services.ledger.audit()
        assert report.clean, report.to_dict()["violations"]
