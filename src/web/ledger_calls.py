"""Counts every ledger command the service issues, and its failures, for /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from web.metrics import LEDGER_FAILURES, LEDGER_OPERATIONS


@asynccontextmanager
async def counted(operation: str) -> AsyncIterator[None]:
    LEDGER_OPERATIONS.labels(operation).inc()
    try:
        yield
    except Exception as exc:
        LEDGER_FAILURES.labels(operation, str(getattr(exc, "code", type(exc).__name__))).inc()
        raise
