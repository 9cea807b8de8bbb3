"""Reads and writes of `ledger_budget_usage`, the same SQL on both backends.

The writer reads a budget's use inside its batch transaction, after the account's head is
locked (PostgreSQL) or the database is (SQLite's BEGIN IMMEDIATE), and writes the batch's
changes in that transaction: so two writers can never both see room that only one hold fits.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.storage.persistence import BatchWrite
from ledger.storage.schema import budget_usage


def _used_query(account_id: str, budget_id: str, start_us: int, end_us: int | None):  # type: ignore[no-untyped-def]
    query = select(func.coalesce(func.sum(budget_usage.c.amount), 0)).where(
        budget_usage.c.account_id == account_id,
        budget_usage.c.budget_id == budget_id,
        budget_usage.c.placed_at_us >= start_us,
    )
    if end_us is not None:
        query = query.where(budget_usage.c.placed_at_us < end_us)
    return query


def budget_used(
    connection: Connection, account_id: str, budget_id: str, start_us: int, end_us: int | None
) -> int:
    """Held plus captured by holds placed under the budget within [start, end)."""
    return int(
        connection.execute(_used_query(account_id, budget_id, start_us, end_us)).scalar_one()
    )


async def budget_used_now(
    engine: AsyncEngine, account_id: str, budget_id: str, start_us: int, end_us: int | None
) -> int:
    """The same sum from the read pool (a snapshot for display; the writer re-checks)."""
    async with engine.connect() as connection:
        query = _used_query(account_id, budget_id, start_us, end_us)
        return int((await connection.execute(query)).scalar_one())


def write_budget_usage(connection: Connection, batch: BatchWrite) -> None:
    """The batch's budget rows: placements, then captures, then releases."""
    if batch.budget_holds:
        connection.execute(
            insert(budget_usage),
            [
                {
                    "hold_id": row.hold_id,
                    "budget_id": row.budget_id,
                    "account_id": row.account_id,
                    "placed_at_us": row.placed_at_us,
                    "amount": row.amount,
                    "is_open": True,
                }
                for row in batch.budget_holds
            ],
        )
    if batch.budget_captures:
        connection.execute(
            update(budget_usage)
            .where(budget_usage.c.hold_id == bindparam("captured_hold"))
            .values(amount=bindparam("captured_amount"), is_open=False),
            [{"captured_hold": h, "captured_amount": a} for h, a in batch.budget_captures],
        )
    if batch.budget_releases:
        connection.execute(
            delete(budget_usage).where(budget_usage.c.hold_id.in_(batch.budget_releases))
        )
