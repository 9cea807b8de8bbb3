"""HTTP handlers of receipts and checkpoints: GET /api/receipts/{request_id} (owner or admin),
POST /api/receipts/{request_id}/link and GET /api/receipts/{request_id}/file (a signed link,
no credentials), GET /api/ledger/public-key (anyone), POST /api/admin/ledger/checkpoints."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import PathParameter, QueryParameter
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
MAX_EXPIRES_S = 2**40
SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")


class ReceiptLink(msgspec.Struct):
    url: str
    """Path and query of the receipt's file; opens without credentials until `expires`."""
    expires: int
    """Unix seconds."""


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

    @post("/receipts/{request_id:str}/link", status_code=HTTP_200_OK)
    async def link(
        self,
        identity: NamedDependency[Identity],
        receipts: NamedDependency[ReceiptsService],
        request_id: RequestId,
    ) -> ReceiptLink:
        """A short-lived signed link to the receipt (owner or admin), to open or hand on
        without credentials: valid for LEDGERCHAT_BILLING_RECEIPT_LINK_TTL_S."""
        url, expires = await receipts.link(identity, request_id)
        return ReceiptLink(url=url, expires=expires)

    @get("/receipts/{request_id:str}/file", opt={PUBLIC: True}, security=[])
    async def receipt_file(
        self,
        receipts: NamedDependency[ReceiptsService],
        request_id: RequestId,
        expires: Annotated[int, QueryParameter(ge=0, le=MAX_EXPIRES_S)],
        signature: Annotated[str, QueryParameter(min_length=43, max_length=43)],
    ) -> Response[dict[str, Any]]:
        """The receipt as a download (`receipt-<request id>.json`), through a signed link (the
        page's footer, POST .../link): no credentials. 404 for a wrong signature, 403
        `permission_denied` (`reason: link_expired`) for a link whose time is up."""
        receipt = await receipts.linked_receipt(request_id, expires, signature)
        name = request_id if SAFE_FILE_NAME.fullmatch(request_id) else "receipt"
        return Response(
            receipt,
            headers={
                "Content-Disposition": f'attachment; filename="receipt-{name}.json"',
                "Cache-Control": "no-store",
            },
        )

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
