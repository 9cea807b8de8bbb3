"""Wire types of admin actions."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from ledger.domain import MAX_KEY_LENGTH
from web.domain.accounts.invites import MAX_INVITE_TTL_S
from web.domain.accounts.schemas import UserView
from web.domain.chat.schemas import BalanceView

MAX_TOPUP_CREDITS = 10_000_000
# The ledger key is the prefix plus the client's Idempotency-Key, within the ledger's limit.
TOPUP_KEY_PREFIX = "topup:"
MAX_TOPUP_KEY_CHARS = MAX_KEY_LENGTH - len(TOPUP_KEY_PREFIX)


class TopUpRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOPUP_CREDITS)]
    note: Annotated[str, msgspec.Meta(max_length=200)] = "admin top-up"


class InviteRequest(msgspec.Struct, forbid_unknown_fields=True):
    expires_in_s: Annotated[int, msgspec.Meta(ge=0, le=MAX_INVITE_TTL_S)] | None = None
    """Seconds the code stays valid; 0 never expires; none: LEDGERCHAT_AUTH_INVITE_DEFAULT_TTL_S."""
    note: Annotated[str, msgspec.Meta(max_length=200)] = ""


class TopUpResult(msgspec.Struct):
    user_id: int
    amount: int
    event_id: str
    balance: BalanceView


class UserWithBalance(msgspec.Struct):
    user: UserView
    balance: BalanceView


class AuditResult(msgspec.Struct):
    clean: bool
    report: dict[str, Any]
