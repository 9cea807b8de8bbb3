"""Receipts of chat replies through the real app on SQLite and PostgreSQL: what they state,
their offline check (`ledgerchat verify`), who may read them, /v1's receipt_url, refunds on the
receipt, and `ledgerchat audit` over the signed checkpoints."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update

from ledger.checkpoints import Checkpoint, load_public_key
from ledger.settings import LedgerSettings
from ledger.storage.database import create_engines
from ledger.storage.schema import checkpoints
from tests.web.web_testing import PASSWORD, chat, login, signed_in
from web.cli import main
from web.domain.receipts.keys import SigningKeyError, kept_signer

pytestmark = pytest.mark.slow


async def _server(make_server: Any, make_settings: Any, database_url: str) -> Any:
    # Checkpoints only on demand: the test decides when heads are signed.
    settings = make_settings(
        database_url=database_url, LEDGERCHAT_BILLING_CHECKPOINT_INTERVAL_S="0"
    )
    server = await make_server(settings)
    await server.services.engine.load("tiny")
    return server


async def _settled_chat(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    status, events, error = await chat(client, headers, "Tell me a story")
    assert status == 200, error
    done = events[-1].data
    assert done["settlement"] == "captured", done
    return dict(done)


def _verify(tmp_path: Path, receipt: Any, public_key: Path, name: str = "receipt.json") -> int:
    path = tmp_path / name
    path.write_text(receipt if isinstance(receipt, str) else json.dumps(receipt))
    return main(["verify", str(path), "--public-key", str(public_key)])


async def _public_key_file(client: httpx.AsyncClient, tmp_path: Path) -> Path:
    response = await client.get("/api/ledger/public-key.pem")
    assert response.status_code == 200
    path = tmp_path / "ledger.pem"
    path.write_text(response.text)
    return path


class TestReceipt:
    async def test_a_settled_reply_has_a_receipt_that_verifies_offline(
        self, make_server, make_settings, database_url, tmp_path, capsys
    ):
        """The receipt states the hold placed, captured and released, tokens, model and price
        version as settled; it carries a checkpoint and `ledgerchat verify` says valid (0)."""
        server = await _server(make_server, make_settings, database_url)
        async with server.client() as client:
            headers = await signed_in(client, "rita")
            done = await _settled_chat(client, headers)
            response = await client.get(f"/api/receipts/{done['request_id']}", headers=headers)
            assert response.status_code == 200, response.text
            receipt = response.json()
            key_file = await _public_key_file(client, tmp_path)
        hold = receipt["hold"]
        assert hold["placed"] == done["hold_credits"]
        assert hold["captured"] == done["cost_credits"] > 0
        assert hold["released"] == done["hold_credits"] - done["cost_credits"]
        assert hold["refunded"] == 0
        assert receipt["prompt_tokens"] == done["prompt_tokens"]
        assert receipt["completion_tokens"] == done["completion_tokens"]
        assert receipt["price_version"] == done["price_version"]
        assert receipt["finish_reason"] == done["finish_reason"]
        assert receipt["model"] == "tiny"
        assert receipt["checkpoint"]["sequence"] == receipt["events"][-1]["sequence"]
        assert _verify(tmp_path, receipt, key_file) == 0
        assert "valid" in capsys.readouterr().out

    async def test_edited_receipts_and_other_keys_fail(
        self, make_server, make_settings, database_url, tmp_path, capsys
    ):
        """An edited amount (in an event or in the summary) is invalid (1), so is a checkpoint
        signed with another key; a file that is not a receipt is unreadable (2)."""
        server = await _server(make_server, make_settings, database_url)
        async with server.client() as client:
            headers = await signed_in(client, "sam")
            done = await _settled_chat(client, headers)
            receipt = (
                await client.get(f"/api/receipts/{done['request_id']}", headers=headers)
            ).json()
            key_file = await _public_key_file(client, tmp_path)
        capture = next(e for e in receipt["events"] if e["event_type"] == "hold_captured")
        edited = json.loads(json.dumps(receipt))
        next(e for e in edited["events"] if e["sequence"] == capture["sequence"])["amount"] -= 1
        assert _verify(tmp_path, edited, key_file, "event.json") == 1
        assert "do not hash" in capsys.readouterr().err

        summary = json.loads(json.dumps(receipt))
        summary["hold"]["captured"] -= 1
        assert _verify(tmp_path, summary, key_file, "summary.json") == 1
        assert "hold.captured" in capsys.readouterr().err

        other = Ed25519PrivateKey.generate()
        forged = json.loads(json.dumps(receipt))
        checkpoint = Checkpoint(**forged["checkpoint"])
        forged["checkpoint"]["signature"] = base64.b64encode(
            other.sign(checkpoint.message())
        ).decode()
        assert _verify(tmp_path, forged, key_file, "forged.json") == 1
        assert "signature" in capsys.readouterr().err

        assert _verify(tmp_path, "this is not json {", key_file, "garbage.json") == 2
        assert _verify(tmp_path, {"format": "something else"}, key_file, "other.json") == 2
        assert main(["verify", str(tmp_path / "missing.json"), "--public-key", str(key_file)]) == 2

    async def test_only_the_owner_or_an_admin_reads_a_receipt(
        self, make_server, make_settings, database_url
    ):
        """Another user gets the same 404 as for a request that never existed; an admin
        reads it."""
        server = await _server(make_server, make_settings, database_url)
        async with server.client() as client:
            owner = await signed_in(client, "olive")
            done = await _settled_chat(client, owner)
            stranger = await signed_in(client, "mallory")
            url = f"/api/receipts/{done['request_id']}"
            theirs = await client.get(url, headers=stranger)
            unknown = await client.get("/api/receipts/no-such-request", headers=stranger)
            assert theirs.status_code == unknown.status_code == 404
            assert theirs.json()["error"] == unknown.json()["error"]
            await server.services.accounts.register(
                "root", "root@example.com", PASSWORD, role="admin"
            )
            admin_token = (await login(client, "root"))["access_token"]
            admin = await client.get(url, headers={"Authorization": f"Bearer {admin_token}"})
            assert admin.status_code == 200
            assert admin.json()["request_id"] == done["request_id"]

    async def test_a_refund_of_the_reply_shows_on_its_receipt(
        self, make_server, make_settings, database_url, tmp_path
    ):
        """A later refund of the reply's capture is on its receipt, which still verifies."""
        server = await _server(make_server, make_settings, database_url)
        async with server.client() as client:
            headers = await signed_in(client, "rafa")
            done = await _settled_chat(client, headers)
            url = f"/api/receipts/{done['request_id']}"
            first = (await client.get(url, headers=headers)).json()
            capture = next(e for e in first["events"] if e["event_type"] == "hold_captured")
            ledger = server.services.ledger
            await ledger.refund(
                capture["account_id"],
                f"{capture['account_id']}:{capture['sequence']}",
                1,
                reason="test refund",
                idempotency_key="refund-1",
            )
            receipt = (await client.get(url, headers=headers)).json()
            key_file = await _public_key_file(client, tmp_path)
        assert receipt["hold"]["refunded"] == 1
        assert receipt["checkpoint"]["sequence"] > first["checkpoint"]["sequence"]
        assert _verify(tmp_path, receipt, key_file) == 0


class TestOpenAIReceiptUrl:
    async def test_v1_answers_carry_a_working_receipt_url(
        self, make_server, make_settings, database_url
    ):
        """Non-streamed answers and the final streamed chunk carry x_ledgerchat.receipt_url,
        which the same API key can read."""
        server = await _server(make_server, make_settings, database_url)
        async with server.client() as client:
            headers = await signed_in(client, "vera")
            secret = (await client.post("/api/keys", json={"name": "v1"}, headers=headers)).json()[
                "secret"
            ]
            key = {"Authorization": f"Bearer {secret}"}
            body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}
            answer = await client.post(
                "/v1/chat/completions", json={**body, "max_tokens": 6}, headers=key
            )
            assert answer.status_code == 200, answer.text
            url = answer.json()["x_ledgerchat"]["receipt_url"]
            receipt = await client.get(url, headers=key)
            assert receipt.status_code == 200, receipt.text
            assert receipt.json()["request_id"] == answer.json()["x_ledgerchat"]["request_id"]
            chunks = []
            async with client.stream(
                "POST",
                "/v1/chat/completions",
                json={**body, "max_tokens": 6, "stream": True},
                headers=key,
            ) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        chunks.append(json.loads(line[len("data: ") :]))
            streamed_url = chunks[-1]["x_ledgerchat"]["receipt_url"]
            assert (await client.get(streamed_url, headers=key)).status_code == 200


class TestCheckpointAudit:
    async def test_audit_checks_the_stored_checkpoints(
        self, make_server, make_settings, database_url, tmp_path, capsys
    ):
        """`ledgerchat audit` is clean after `ledgerchat checkpoint`; a checkpoint whose head
        hash or signature was altered is a violation (exit 1)."""
        settings = make_settings(
            database_url=database_url, LEDGERCHAT_BILLING_CHECKPOINT_INTERVAL_S="0"
        )
        server = await make_server(settings)
        await server.services.engine.load("tiny")
        async with server.client() as client:
            headers = await signed_in(client, "ada")
            await _settled_chat(client, headers)
            key_file = await _public_key_file(client, tmp_path)
        await server.stop()
        url = settings.database_url
        audit = ["audit", "--db", url, "--public-key", str(key_file), "--format", "json"]
        cli = ["--db", url]
        data_dir = str(settings.server.data_dir)
        env = {"LEDGERCHAT_DATA_DIR": data_dir, "LEDGERCHAT_DATABASE_URL": url}

        def run(argv: list[str]) -> int:
            return main(argv)

        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            assert await asyncio.to_thread(run, ["checkpoint", *cli]) == 0
            assert "checkpoints signed" in capsys.readouterr().out
            assert await asyncio.to_thread(run, audit) == 0
            capsys.readouterr()
            # The server stopped: change the stored checkpoint through a fresh engine.
            engines = create_engines(url, LedgerSettings())
            try:
                async with engines.write.begin() as connection:
                    await connection.execute(update(checkpoints).values(head_hash="f" * 64))
            finally:
                await engines.dispose()
            assert await asyncio.to_thread(run, audit) == 1
            report = json.loads(capsys.readouterr().out)
            kinds = {v["kind"] for v in report["violations"]}
            assert kinds == {"checkpoint"}, report["violations"]
            details = " ".join(v["detail"] for v in report["violations"])
            assert "signature" in details and "head hash" in details


class TestSigningKey:
    def test_the_key_is_made_once_private_and_refused_when_others_can_read_it(self, tmp_path):
        """The key file is created 0600 with its public half beside it, the same key is read
        back, and a key file others can read (or a link) is refused."""
        first = kept_signer(tmp_path)
        key_file = tmp_path / "ledger-signing-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert kept_signer(tmp_path).key_id == first.key_id
        assert load_public_key((tmp_path / "ledger-signing-key.pub").read_bytes())
        key_file.chmod(0o644)
        with pytest.raises(SigningKeyError, match="readable by other users"):
            kept_signer(tmp_path)
        key_file.chmod(0o600)
        linked = tmp_path / "linked"
        linked.mkdir()
        (linked / "ledger-signing-key").symlink_to(key_file)
        with pytest.raises(SigningKeyError, match="plain file"):
            kept_signer(linked)
