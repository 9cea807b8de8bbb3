"""Signed receipt links through the real app on SQLite and PostgreSQL: a link made for a
reply's owner opens its receipt without credentials, as a `receipt-<id>.json` download that
`ledgerchat verify` accepts; a changed signature or another receipt's id is the 404 of an
unknown receipt, an expired link a 403 that says so, and nobody but the owner (or an admin)
can have one made."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.web.test_receipts import _public_key_file, _server, _settled_chat
from tests.web.web_testing import signed_in
from web.cli import main
from web.domain.receipts.links import ReceiptLinks

pytestmark = pytest.mark.slow


class TestReceiptLinks:
    async def test_a_link_opens_the_receipt_without_credentials(
        self, make_server, make_settings, database_url, tmp_path: Path, capsys
    ):
        """The owner's link downloads the receipt with no Authorization header; it verifies
        offline; tampering, reuse for another reply, expiry and strangers are refused."""
        server = await _server(make_server, make_settings, database_url)
        secret = server.services.settings.auth.jwt_secret
        async with server.client() as client:
            owner = await signed_in(client, "linker")
            first = await _settled_chat(client, owner)
            second = await _settled_chat(client, owner)
            made = await client.post(f"/api/receipts/{first['request_id']}/link", headers=owner)
            assert made.status_code == 200, made.text
            url, expires = made.json()["url"], made.json()["expires"]
            opened = await client.get(url)
            key_file = await _public_key_file(client, tmp_path)

            signature = url.rsplit("signature=", 1)[1]
            flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
            tampered = await client.get(url.replace(signature, flipped))
            other_reply = await client.get(url.replace(first["request_id"], second["request_id"]))
            later = await client.get(url.replace(f"expires={expires}", f"expires={expires + 1}"))
            old_links = ReceiptLinks(secret, 60, clock=lambda: time.time() - 3600)
            owner_id = (await client.get("/api/me", headers=owner)).json()["id"]
            expired = await client.get(old_links.url(first["request_id"], owner_id))
            stranger = await signed_in(client, "stranger")
            theirs = await client.post(
                f"/api/receipts/{first['request_id']}/link", headers=stranger
            )
        assert opened.status_code == 200, opened.text
        assert opened.headers["content-disposition"] == (
            f'attachment; filename="receipt-{first["request_id"]}.json"'
        )
        assert opened.headers["cache-control"] == "no-store"
        receipt = opened.json()
        assert receipt["request_id"] == first["request_id"]
        assert receipt["hold"]["captured"] == first["cost_credits"]
        path = tmp_path / "receipt.json"
        path.write_text(json.dumps(receipt))
        assert main(["verify", str(path), "--public-key", str(key_file)]) == 0
        assert "valid" in capsys.readouterr().out
        assert expires - time.time() <= server.services.settings.billing.receipt_link_ttl_s
        for refused in (tampered, other_reply, later):
            assert refused.status_code == 404, refused.text
        assert expired.status_code == 403
        assert expired.json()["error"]["details"]["reason"] == "link_expired"
        assert theirs.status_code == 404
