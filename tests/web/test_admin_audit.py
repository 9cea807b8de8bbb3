"""The admin audit (GET /api/admin/audit and the admin page's Run audit) checks the stored
checkpoints' signatures with the service's key, as `ledgerchat audit` does, not only their
head hashes: a signature made by another key is a `checkpoint` violation naming the account
and sequence, and the page shows its check highlighted. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update

from ledger.checkpoints import Checkpoint
from ledger.storage.schema import checkpoints
from tests.web.web_testing import PASSWORD, chat, login, signed_in
from web.ui.admin import AdminActions
from web.ui.session import UISession

pytestmark = pytest.mark.slow
CHECKPOINT_ROW = '<tr class="lc-audit-fail"><td>Checkpoints: signatures valid, heads on the chain'


async def _admin(server: Any, client: Any) -> tuple[dict[str, str], UISession]:
    """An admin's bearer header and a page session of the same admin."""
    accounts = server.services.accounts
    await accounts.register("root", "root@example.com", PASSWORD, role="admin")
    headers = {"Authorization": f"Bearer {(await login(client, 'root'))['access_token']}"}
    tokens = await accounts.login("root", PASSWORD, "127.0.0.1")
    session = UISession()
    session.start(tokens, await accounts.identity_from_access_token(tokens.access_token))
    return headers, session


async def _forge_signatures(server: Any) -> Checkpoint:
    """Re-sign every stored checkpoint with a key that is not the service's; returns one."""
    other = Ed25519PrivateKey.generate()
    engine = server.services.ledger._store.engines.write
    async with engine.begin() as connection:
        rows = (await connection.execute(select(checkpoints))).mappings().all()
        assert rows
        for row in rows:
            checkpoint = Checkpoint(**{name: row[name] for name in Checkpoint.__slots__})
            forged = base64.b64encode(other.sign(checkpoint.message())).decode()
            await connection.execute(
                update(checkpoints)
                .where(checkpoints.c.account_id == checkpoint.account_id)
                .where(checkpoints.c.sequence == checkpoint.sequence)
                .values(signature=forged)
            )
    return checkpoint


class TestAdminAuditSignatures:
    async def test_a_signature_by_another_key_is_a_highlighted_violation(
        self, make_server, make_settings, database_url
    ):
        """Clean after signing; after the stored signatures are replaced by another key's
        (head hashes untouched) the API reports `checkpoint` violations with the account and
        sequence, and the admin page's audit highlights the checkpoint check."""
        settings = make_settings(database_url, LEDGERCHAT_BILLING_CHECKPOINT_INTERVAL_S="0")
        server = await make_server(settings)
        admin_page = AdminActions(server.services)
        async with server.client() as client:
            admin, session = await _admin(server, client)
            user = await signed_in(client, "audited")
            status, _, error = await chat(client, user, "Hi", sampling={"max_tokens": 4})
            assert status == 200, error
            signed = await client.post("/api/admin/ledger/checkpoints", headers=admin)
            assert signed.status_code == 200 and signed.json()["signed"], signed.text
            clean = (await client.get("/api/admin/audit", headers=admin)).json()
            assert clean["clean"], clean["report"]["violations"]
            assert CHECKPOINT_ROW not in await admin_page.audit(session)

            forged = await _forge_signatures(server)
            report = (await client.get("/api/admin/audit", headers=admin)).json()
        assert not report["clean"]
        violations = report["report"]["violations"]
        assert {v["kind"] for v in violations} == {"checkpoint"}
        assert all("signature is not valid" in v["detail"] for v in violations)
        assert any(
            (v["account_id"], v["sequence"]) == (forged.account_id, forged.sequence)
            for v in violations
        )
        page = await admin_page.audit(session)
        assert CHECKPOINT_ROW in page
        assert "signature is not valid" in page
