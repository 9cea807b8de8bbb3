"""History for people: the ledger's events grouped into one item per chat reply, top-up,
refund or charge, newest first.

A reply writes two ledger events: `hold_placed` (the worst case reserved) and then either
`hold_captured` (the cost taken; the unused rest released in the same event) or
`hold_released` (nothing taken). The item of a reply is anchored at its resolving event, which
carries the cost, the tokens and the model; its `hold_placed` event gives no item of its own.
A hold still open gives one `pending` item anchored at its `hold_placed` event, with the
credits held. Every other event is its own item.

Pages follow the ledger's: the cursor is the sequence number of the last item's anchor, so a
page is the next `limit` items below it, read in chunks of raw events. Whether a hold is open
is read from the ledger once per page, before the events, and a resolution seen in the same
read wins (a hold resolved while the page is read is not shown twice).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

from ledger import HistoryEntry, Ledger
from web.ledger_calls import counted

HistoryKind = Literal["reply", "hold", "top_up", "refund", "charge"]
HistoryStatus = Literal["pending", "billed", "not_billed", "posted"]
SCAN_CHUNK = 200
CHAT_PURPOSE = "chat"
_POSTED_KIND: dict[str, HistoryKind] = {
    "credits_added": "top_up",
    "refunded": "refund",
    "charged": "charge",
}
_POSTED_SIGN = {"credits_added": 1, "refunded": 1, "charged": -1}


class HistoryItem(msgspec.Struct):
    """One line of the history: a reply (all of its hold's events), a top-up, a refund or a
    charge. `amount` is the net effect on posted credits (0 while pending); `held` is what a
    pending reply holds; `released` is what went back to available when the hold resolved."""

    kind: HistoryKind
    status: HistoryStatus
    occurred_at: dt.datetime
    amount: int
    held: int
    released: int
    balance_after: int
    available_after: int
    event_id: str
    """The event the item is anchored at (the resolving event of a reply)."""
    hold_id: str | None = None
    request_id: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    price_version: str | None = None
    reason: str | None = None
    note: str | None = None


class HistoryPage(msgspec.Struct):
    items: list[HistoryItem]
    next_cursor: str | None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _base(entry: HistoryEntry, kind: HistoryKind, status: HistoryStatus) -> HistoryItem:
    return HistoryItem(
        kind=kind,
        status=status,
        occurred_at=entry.time,
        amount=0,
        held=0,
        released=0,
        balance_after=entry.posted_after,
        available_after=entry.available_after,
        event_id=entry.event_id,
        hold_id=entry.hold_id,
        reason=entry.reason,
        note=entry.note or entry.source or None,
    )


def group_entry(
    entry: HistoryEntry, open_holds: dict[str, int], resolved: set[str]
) -> HistoryItem | None:
    """The item `entry` anchors, or None when it belongs to an item anchored elsewhere.
    `resolved` collects the holds whose resolution was seen (entries come newest first)."""
    kind = entry.event_type
    if kind in ("hold_captured", "hold_released"):
        if entry.hold_id is not None:
            resolved.add(entry.hold_id)
        captured = kind == "hold_captured"
        item = _base(entry, "reply", "billed" if captured and entry.amount else "not_billed")
        item.amount = -entry.amount if captured else 0
        item.released = entry.released_amount if captured else entry.amount
        metadata = entry.metadata
        item.request_id = _str(metadata.get("request_id"))
        item.model = _str(metadata.get("model"))
        item.prompt_tokens = _int(metadata.get("prompt_tokens"))
        item.completion_tokens = _int(metadata.get("completion_tokens"))
        item.price_version = _str(metadata.get("price_version"))
        return item
    if kind == "hold_placed":
        hold_id = entry.hold_id
        if hold_id is None or hold_id not in open_holds or hold_id in resolved:
            return None  # resolved: its resolving event is the item
        item = _base(entry, "reply" if entry.purpose == CHAT_PURPOSE else "hold", "pending")
        item.held = entry.amount
        item.request_id = entry.reference
        return item
    item = _base(entry, _POSTED_KIND.get(kind, "charge"), "posted")
    item.amount = _POSTED_SIGN.get(kind, 0) * entry.amount
    item.model = _str(entry.metadata.get("model"))
    # A refund of a reply names it (web.domain.admin.refunds writes the request id).
    item.request_id = _str(entry.metadata.get("request_id"))
    return item


async def grouped_history(
    ledger: Ledger, account_id: str, *, cursor: str | None, limit: int
) -> HistoryPage:
    """Up to `limit` items below `cursor` (an anchor's sequence number), newest first."""
    async with counted("history"):
        open_holds = await ledger.open_holds(account_id)
    resolved: set[str] = set()
    anchored: list[tuple[int, HistoryItem]] = []
    raw_cursor = cursor
    chunk = min(SCAN_CHUNK, ledger.settings.history_page_max)
    while len(anchored) <= limit:
        async with counted("history"):
            page = await ledger.history(account_id, cursor=raw_cursor, limit=chunk)
        for entry in page.entries:
            item = group_entry(entry, open_holds, resolved)
            if item is not None:
                anchored.append((entry.sequence, item))
                if len(anchored) > limit:
                    break
        if page.next_cursor is None:
            break
        raw_cursor = page.next_cursor
    more = len(anchored) > limit
    anchored = anchored[:limit]
    return HistoryPage(
        items=[item for _, item in anchored],
        next_cursor=str(anchored[-1][0]) if more else None,
    )
