"""Receipts of settled chat replies and the checkpoints they are verified against.

A receipt is read for its owner or an admin; anyone else gets the same 404 as for a request
that never existed. When no checkpoint covers the reply's events yet, reading its receipt signs
the account's head first (one signature, one row), so every receipt served carries one.
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
from web.errors import NotFound
from web.ledger_calls import counted
from web.logging import get_logger
from web.tables import ChatRequestRow

log = get_logger(__name__)
STATUS_DONE = "done"


def receipt_url(request_id: str) -> str:
    return f"/api/receipts/{request_id}"


class ReceiptsService:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], ledger: Ledger, signer: Signer
    ) -> None:
        self._sessions = sessions
        self._ledger = ledger
        self._signer = signer

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

    async def receipt(self, identity: Identity, request_id: str) -> dict[str, Any]:
        """The receipt of a settled reply of the caller (any user's for an admin)."""
        async with self._sessions() as session:
            row = await session.scalar(
                select(ChatRequestRow).where(ChatRequestRow.id == request_id)
            )
        if row is None or (row.user_id != identity.user_id and not identity.is_admin):
            raise NotFound("no such receipt")
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
