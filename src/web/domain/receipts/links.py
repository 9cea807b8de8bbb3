"""Short-lived signed receipt links, so the page can link each reply's receipt.

The page's API calls carry a bearer token that a plain link cannot, so a link to
`/api/receipts/{id}` would answer 401. A receipt link instead carries its own proof:
`/api/receipts/{request_id}/file?expires=<unix s>&signature=<base64url>`, where the signature
is HMAC-SHA256 over (request id, owner's user id, expiry) under a key derived from the service's
signing secret (LEDGERCHAT_AUTH_JWT_SECRET or the data directory's `jwt-secret`), so every
process of one deployment accepts another's links. A link opens one receipt, of its owner,
until it expires (LEDGERCHAT_BILLING_RECEIPT_LINK_TTL_S); it grants nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from urllib.parse import quote

LINK_FORMAT = b"ledgerchat-receipt-link/1"
KEY_LABEL = b"ledgerchat-receipt-links"
SIGNATURE_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
"""Base64url of a 32-byte HMAC-SHA256, without padding."""


class LinkInvalid(Exception):
    """The signature is not this service's for that receipt (or is malformed)."""


class LinkExpired(Exception):
    """The signature is right but the link's time is up."""


def receipt_file_path(request_id: str) -> str:
    return f"/api/receipts/{quote(request_id, safe='')}/file"


class ReceiptLinks:
    def __init__(self, secret: str, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        # Without a configured secret, a random key: links then last until a restart, as the
        # access tokens do.
        secret_bytes = secret.encode() if secret else secrets.token_bytes(32)
        self._key = hmac.new(secret_bytes, KEY_LABEL, hashlib.sha256).digest()
        self.ttl_s = ttl_s
        self._clock = clock

    def _signature(self, request_id: str, user_id: int, expires: int) -> str:
        message = b"\n".join(
            [LINK_FORMAT, request_id.encode(), str(user_id).encode(), str(expires).encode()]
        )
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def make(self, request_id: str, user_id: int) -> tuple[str, int]:
        """A link (path and query) to the receipt of `request_id`, owned by `user_id`, and
        when it expires (Unix seconds): the TTL from now."""
        expires = int(self._clock()) + self.ttl_s
        signature = self._signature(request_id, user_id, expires)
        url = f"{receipt_file_path(request_id)}?expires={expires}&signature={signature}"
        return url, expires

    def url(self, request_id: str, user_id: int) -> str:
        return self.make(request_id, user_id)[0]

    def check(self, request_id: str, user_id: int, expires: int, signature: str) -> None:
        """LinkInvalid unless the signature is this service's for the receipt and owner;
        LinkExpired when it is but its time is up."""
        if not SIGNATURE_PATTERN.fullmatch(signature):
            raise LinkInvalid("malformed signature")
        if not hmac.compare_digest(signature, self._signature(request_id, user_id, expires)):
            raise LinkInvalid("signature mismatch")
        if expires < self._clock():
            raise LinkExpired(f"expired at {expires}")
