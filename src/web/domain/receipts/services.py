"""Receipts of settled chat replies and the checkpoints they are verified against.

A receipt is read for its owner or an admin, or through a signed receipt link (`links.py`);
anyone else gets the same 404 as for a request that never existed. When no checkpoint covers
the reply's events yet, reading its receipt signs the account's head first (one signature, one
row), so every receipt served carries one.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger import Ledger
from ledger.checkpoints import Checkpoint, Signer, public_key_pem, raw_public_key
from web.domain.accounts.schemas import Identity
from web.domain.receipts.document import build_receipt
from web.domain.receipts.links import LinkExpired, LinkInvalid, ReceiptLinks
from web.errors import NotFound, PermissionDenied
from web.ledger_calls import counted
from web.logging import get_logger
from web.tables import ChatRequestRow, UserRow

log = get_logger(__name__)
STATUS_DONE = "done"


def receipt_url(request_id: str) -> str:
    return f"/api/receipts/{request_id}"


class ReceiptsService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ledger: Ledger,
        signer: Signer,
        links: ReceiptLinks,
    ) -> None:
        self._sessions = sessions
        self._ledger = ledger
        self._signer = signer
        self.links = links

    def public_key(self) -> dict[str, str]:
        """The checkpoint key: PEM (SubjectPublicKeyInfo), raw 32 bytes in base64, key id."""
        public = self._signer.public_key
        return {
            "algorithm": "Ed25519",
            "key_id": self._signer.key_id,
            "pem": public_key_pem(public),
            "raw_base64": base64.b64encode(raw_public_key(public)).decode(),
        }

    async def checkpoint(self) -> list[Checkpoint]:
        """Sign the head of every account that moved since its last checkpoint."""
        async with counted("sign_heads"):
            signed = await self._ledger.sign_heads(self._signer)
        if signed:
            log.info("ledger_checkpoints_signed", count=len(signed))
        return signed

    async def _row(self, request_id: str) -> ChatRequestRow | None:
        async with self._sessions() as session:
            return await session.scalar(
                select(ChatRequestRow).where(ChatRequestRow.id == request_id)
            )

    async def receipt(self, identity: Identity, request_id: str) -> dict[str, Any]:
        """The receipt of a settled reply of the caller (any user's for an admin)."""
        row = await self._row(request_id)
        if row is None or (row.user_id != identity.user_id and not identity.is_admin):
            raise NotFound("no such receipt")
        return await self._receipt_of(row)

    async def link(self, identity: Identity, request_id: str) -> tuple[str, int]:
        """A signed link to the receipt of a reply of the caller (any user's for an admin),
        and when it expires (Unix seconds)."""
        row = await self._row(request_id)
        if row is None or (row.user_id != identity.user_id and not identity.is_admin):
            raise NotFound("no such receipt")
        return self.links.make(request_id, row.user_id)

    async def linked_receipt(self, request_id: str, expires: int, signature: str) -> dict[str, Any]:
        """The receipt a signed link names: 404 for a wrong signature (as for an unknown
        request) or a disabled owner, 403 for a right one whose time is up."""
        row = await self._row(request_id)
        if row is None:
            raise NotFound("no such receipt")
        try:
            self.links.check(request_id, row.user_id, expires, signature)
        except LinkInvalid:
            raise NotFound("no such receipt") from None
        except LinkExpired:
            raise PermissionDenied(
                "this receipt link has expired: reopen the conversation in the page for a "
                "fresh link, or GET /api/receipts/{request_id} with your credentials",
                reason="link_expired",
            ) from None
        async with self._sessions() as session:
            owner = await session.get(UserRow, row.user_id)
        if owner is None or owner.disabled_at is not None:
            raise NotFound("no such receipt")
        return await self._receipt_of(row)

    async def _receipt_of(self, row: ChatRequestRow) -> dict[str, Any]:
        request_id = row.id
        if row.status != STATUS_DONE or row.outcome_json is None:
            raise NotFound("this request is not settled yet")
        outcome = msgspec.json.decode(row.outcome_json)["done"]
        key = f"chat:{request_id}:hold"
        for account_id in await self._ledger.accounts_of(f"user:{row.user_id}"):
            proof = await self._ledger.proof(account_id, key)
            if proof is None:
                continue
            if proof.checkpoint is None:
                await self._ledger.sign_heads(self._signer, account_id)
                proof = await self._ledger.proof(account_id, key)
                assert proof is not None  # events are never deleted
            return build_receipt(request_id, outcome, proof)
        raise NotFound("this request placed no hold")
