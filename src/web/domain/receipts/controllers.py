"""HTTP handlers of receipts and checkpoints: GET /api/receipts/{request_id} (owner or admin),
GET /api/ledger/public-key (anyone), POST /api/admin/ledger/checkpoints (an admin)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, MediaType, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import PathParameter
from litestar.status_codes import HTTP_200_OK

from web.auth import IDENTITY_DEPENDENCY, PUBLIC, SECURITY, requires_admin
from web.domain.accounts.schemas import Identity
from web.domain.receipts.services import ReceiptsService


def provide_receipts(state: State) -> ReceiptsService:
    receipts: ReceiptsService = state.services.receipts
    return receipts


DEPENDENCIES = {
    **IDENTITY_DEPENDENCY,
    "receipts": Provide(provide_receipts, sync_to_thread=False),
}
RequestId = Annotated[str, PathParameter(min_length=1, max_length=64)]


class ReceiptsController(Controller):
    path = "/api"
    tags = ("receipts",)
    dependencies = DEPENDENCIES
    security = SECURITY

    @get("/receipts/{request_id:str}")
    async def receipt(
        self,
        identity: NamedDependency[Identity],
        receipts: NamedDependency[ReceiptsService],
        request_id: RequestId,
    ) -> dict[str, Any]:
        """The receipt of a settled chat reply (its owner's, or any for an admin; 404 for
        anyone else): what was billed and the ledger events that prove it, chained to a signed
        checkpoint. Check it offline with `ledgerchat verify`. Signs the account's head first
        when no checkpoint covers the reply yet."""
        return await receipts.receipt(identity, request_id)

    @get("/ledger/public-key", opt={PUBLIC: True}, security=[])
    async def public_key(self, receipts: NamedDependency[ReceiptsService]) -> dict[str, str]:
        """The Ed25519 key that signs ledger checkpoints: `pem` (SubjectPublicKeyInfo),
        `raw_base64` (the raw 32 bytes) and `key_id` (first 16 hex digits of their SHA-256)."""
        return receipts.public_key()

    @get("/ledger/public-key.pem", opt={PUBLIC: True}, security=[], media_type=MediaType.TEXT)
    async def public_key_pem(self, receipts: NamedDependency[ReceiptsService]) -> str:
        """The same key as a PEM file, for `ledgerchat verify --public-key`."""
        return receipts.public_key()["pem"]

    @post("/admin/ledger/checkpoints", guards=[requires_admin], status_code=HTTP_200_OK)
    async def checkpoint(
        self, identity: NamedDependency[Identity], receipts: NamedDependency[ReceiptsService]
    ) -> dict[str, Any]:
        """Sign the head of every account that moved since its last checkpoint, now."""
        signed = await receipts.checkpoint()
        return {"signed": [c.to_dict() for c in signed]}
