"""Refunds of chat replies by an admin: all or part of what one reply's capture took, found
by the reply's request id, with the actor and the reason recorded in the ledger event.

The ledger decides whether a refund fits (never more than the capture took minus earlier
refunds: `RefundExceedsTaken`), and its idempotency key makes a retried refund apply once.
This module only finds the capture and names the refund: the refund event refers to the
capture, carries `request_id`, `actor` and `model` in its metadata and the reason in its own
field, so the user's history, the receipts and the audit read it from the ledger alone.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger import HistoryEntry, Ledger
from ledger.domain import MAX_KEY_LENGTH
from ledger.errors import RefundExceedsTaken
from web.domain.accounts.schemas import Identity
from web.domain.chat.schemas import BalanceView
from web.errors import NotFound
from web.ledger_calls import counted
from web.tables import ModelInteractionRow, UserRow

REFUND_KEY_PREFIX = "refund:"
MAX_REFUND_KEY_CHARS = MAX_KEY_LENGTH - len(REFUND_KEY_PREFIX)
MAX_REASON_CHARS = 200
MAX_REFUND_CREDITS = 10_000_000
# The capture is written just before the reply's interaction row; the window bounds the scan.
CAPTURE_WINDOW = dt.timedelta(hours=1)
SCAN_PAGE = 200
MAX_SCAN_PAGES = 50


class RefundRequest(msgspec.Struct, forbid_unknown_fields=True):
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=36)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REASON_CHARS)]
    credits: Annotated[int, msgspec.Meta(ge=1, le=MAX_REFUND_CREDITS)] | None = None
    """Credits to give back; none: everything the reply's capture took and was not refunded."""


class RefundResult(msgspec.Struct):
    request_id: str
    user_id: int
    username: str
    event_id: str
    """The `refunded` ledger event."""
    capture_event_id: str
    credits: int
    captured: int
    refunded_total: int
    reason: str
    replayed: bool
    balance: BalanceView


class _Reply(msgspec.Struct):
    user_id: int
    username: str
    account_id: str
    created_at: dt.datetime


async def _reply(sessions: async_sessionmaker[AsyncSession], request_id: str) -> _Reply:
    async with sessions() as session:
        row = (
            await session.execute(
                select(
                    ModelInteractionRow.user_id,
                    UserRow.username,
                    UserRow.account_id,
                    ModelInteractionRow.created_at,
                )
                .join(UserRow, UserRow.id == ModelInteractionRow.user_id)
                .where(ModelInteractionRow.chat_request_id == request_id)
                .limit(1)
            )
        ).first()
    if row is None or row[2] is None:
        raise NotFound(f"no reply with request id {request_id!r}", request_id=request_id)
    return _Reply(user_id=row[0], username=row[1], account_id=row[2], created_at=row[3])


async def _entries(
    ledger: Ledger,
    account_id: str,
    types: list[str],
    since: dt.datetime,
    until: dt.datetime | None,
) -> list[HistoryEntry]:
    """Every event of `types` in [since, until), newest first (bounded)."""
    found: list[HistoryEntry] = []
    cursor: str | None = None
    for _ in range(MAX_SCAN_PAGES):
        async with counted("history"):
            page = await ledger.history(
                account_id, cursor=cursor, limit=SCAN_PAGE, types=types, since=since, until=until
            )
        found.extend(page.entries)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return found


async def find_capture(
    ledger: Ledger, account_id: str, request_id: str, at: dt.datetime
) -> HistoryEntry:
    """The `hold_captured` event of the reply `request_id` (its metadata names the request)."""
    captures = await _entries(
        ledger, account_id, ["hold_captured"], at - CAPTURE_WINDOW, at + CAPTURE_WINDOW
    )
    for entry in captures:
        if entry.metadata.get("request_id") == request_id:
            return entry
    raise NotFound(f"reply {request_id!r} was not billed: nothing to refund", request_id=request_id)


async def refunded_so_far(ledger: Ledger, account_id: str, capture: HistoryEntry) -> int:
    """Credits already refunded against `capture`."""
    refunds = await _entries(ledger, account_id, ["refunded"], capture.time, None)
    return sum(entry.amount for entry in refunds if entry.refers_to == capture.event_id)


async def refund_reply(
    sessions: async_sessionmaker[AsyncSession],
    ledger: Ledger,
    identity: Identity,
    data: RefundRequest,
    *,
    idempotency_key: str,
) -> RefundResult:
    """Refund `data.credits` (default: the rest) of the reply `data.request_id`; the caller
    has checked that `identity` is an admin."""
    reply = await _reply(sessions, data.request_id)
    capture = await find_capture(ledger, reply.account_id, data.request_id, reply.created_at)
    before = await refunded_so_far(ledger, reply.account_id, capture)
    credits = data.credits if data.credits is not None else capture.amount - before
    if credits <= 0:
        # Nothing left: the ledger's own refusal, with the same figures.
        raise RefundExceedsTaken(capture.event_id, capture.amount, before, max(credits, 0))
    metadata: dict[str, str | int] = {
        "request_id": data.request_id,
        "actor": identity.username,
        "actor_id": identity.user_id,
    }
    model = capture.metadata.get("model")
    if model is not None:
        metadata["model"] = str(model)
    async with counted("refund"):
        receipt = await ledger.refund(
            reply.account_id,
            capture.event_id,
            credits,
            reason=data.reason,
            idempotency_key=REFUND_KEY_PREFIX + idempotency_key,
            metadata=metadata,
        )
    after = before if receipt.replayed else before + receipt.amount
    balance = receipt.balance
    return RefundResult(
        request_id=data.request_id,
        user_id=reply.user_id,
        username=reply.username,
        event_id=receipt.event_id,
        capture_event_id=capture.event_id,
        credits=receipt.amount,
        captured=capture.amount,
        refunded_total=after,
        reason=data.reason,
        replayed=receipt.replayed,
        balance=BalanceView(posted=balance.posted, held=balance.held, available=balance.available),
    )
