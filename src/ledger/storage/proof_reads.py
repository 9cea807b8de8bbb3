"""Storage of checkpoints and the reads receipts are built from (SQLAlchemy Core, both backends).

Checkpoints are inserted outside the writer: they add no event and change no head, and the
primary key (account_id, sequence) makes signing the same head twice (two processes at once) a
no-op. The event reads decode with the same row mapping as the store and check each event's
invariants after reading (`check_event`), as every other read does.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, func, insert, select
from sqlalchemy.exc import IntegrityError

from ledger.checkpoints import Checkpoint, Signer, checkpoint_message
from ledger.domain import Event, EventType, check_event
from ledger.storage.database import Engines
from ledger.storage.rows import EVENT_COLUMNS, event_from_row
from ledger.storage.schema import accounts, checkpoints, events


def _checkpoint_of(row: object) -> Checkpoint:
    m = row._mapping  # type: ignore[attr-defined]
    return Checkpoint(
        account_id=str(m["account_id"]),
        sequence=int(m["sequence"]),
        head_hash=str(m["head_hash"]),
        signed_at_us=int(m["signed_at_us"]),
        key_id=str(m["key_id"]),
        signature=str(m["signature"]),
    )


async def sign_heads(
    engines: Engines, signer: Signer, now_us: int, account_id: str | None = None
) -> list[Checkpoint]:
    """Sign the head of every account (or one) whose newest event has no checkpoint yet."""
    latest = (
        select(checkpoints.c.account_id, func.max(checkpoints.c.sequence).label("sequence"))
        .group_by(checkpoints.c.account_id)
        .subquery()
    )
    query = (
        select(accounts.c.account_id, accounts.c.head_sequence, accounts.c.head_hash)
        .outerjoin(latest, latest.c.account_id == accounts.c.account_id)
        .where(
            accounts.c.head_sequence > 0,
            (latest.c.sequence.is_(None)) | (latest.c.sequence < accounts.c.head_sequence),
        )
        .order_by(accounts.c.account_id)
    )
    if account_id is not None:
        query = query.where(accounts.c.account_id == account_id)
    async with engines.read.connect() as connection:
        heads = (await connection.execute(query)).all()
    signed: list[Checkpoint] = []
    for head_account, sequence, head_hash in heads:
        message = checkpoint_message(head_account, int(sequence), head_hash, now_us)
        checkpoint = Checkpoint(
            head_account, int(sequence), head_hash, now_us, signer.key_id, signer.sign(message)
        )
        try:
            async with engines.write.begin() as connection:
                await connection.execute(insert(checkpoints).values(**checkpoint.to_dict()))
        except IntegrityError:
            continue  # another process signed this head first
        signed.append(checkpoint)
    return signed


async def covering_checkpoint(
    engines: Engines, account_id: str, sequence: int
) -> Checkpoint | None:
    """The earliest checkpoint of the account at or after `sequence` (the shortest segment)."""
    query = (
        select(checkpoints)
        .where(checkpoints.c.account_id == account_id, checkpoints.c.sequence >= sequence)
        .order_by(checkpoints.c.sequence)
        .limit(1)
    )
    async with engines.read.connect() as connection:
        row = (await connection.execute(query)).first()
    return None if row is None else _checkpoint_of(row)


async def all_checkpoints(engines: Engines, account_id: str | None = None) -> list[Checkpoint]:
    query = select(checkpoints).order_by(checkpoints.c.account_id, checkpoints.c.sequence)
    if account_id is not None:
        query = query.where(checkpoints.c.account_id == account_id)
    async with engines.read.connect() as connection:
        return [_checkpoint_of(row) for row in (await connection.execute(query)).all()]


async def event_hashes_at(
    engines: Engines, keys: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], str]:
    """The stored hash of each (account_id, sequence) that exists."""
    found: dict[tuple[str, int], str] = {}
    async with engines.read.connect() as connection:
        for account_id, sequence in keys:
            value = await connection.scalar(
                select(events.c.hash).where(
                    events.c.account_id == account_id, events.c.sequence == sequence
                )
            )
            if value is not None:
                found[(account_id, sequence)] = str(value)
    return found


async def trail(engines: Engines, account_id: str, idempotency_key: str) -> list[Event]:
    """The event stored under `idempotency_key`, the later events of its hold (capture,
    release) and the refunds of any of them, by sequence; empty if there is no such event."""
    select_events = select(*EVENT_COLUMNS).where(events.c.account_id == account_id)
    async with engines.read.connect() as connection:
        first = (
            await connection.execute(
                select_events.where(events.c.idempotency_key == idempotency_key)
            )
        ).first()
        if first is None:
            return []
        origin = check_event(event_from_row(first))
        found = [origin]
        if origin.event_type is EventType.HOLD_PLACED:
            rows = await connection.execute(
                select_events.where(
                    and_(events.c.sequence > origin.sequence, events.c.hold_id == origin.event_id)
                ).order_by(events.c.sequence)
            )
            found += [check_event(event_from_row(row)) for row in rows]
        rows = await connection.execute(
            select_events.where(events.c.refers_to.in_([e.event_id for e in found]))
        )
        found += [check_event(event_from_row(row)) for row in rows]
    return sorted(found, key=lambda e: e.sequence)


async def segment(engines: Engines, account_id: str, first: int, last: int) -> list[Event]:
    """The account's events `first`..`last` (inclusive), by sequence."""
    query = (
        select(*EVENT_COLUMNS)
        .where(
            events.c.account_id == account_id,
            events.c.sequence >= first,
            events.c.sequence <= last,
        )
        .order_by(events.c.sequence)
    )
    async with engines.read.connect() as connection:
        return [check_event(event_from_row(row)) for row in await connection.execute(query)]
