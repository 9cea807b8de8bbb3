"""What /ready and /metrics report about the running services: the database and schemas, the
default model, and each remote model's upstream URLs (reachable, latency), probed when asked."""

from __future__ import annotations

import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from inference.remote.upstream import UrlHealth
from inference.router import InferenceRouter
from ledger import Ledger
from web import metrics
from web.database import schema_is_current
from web.domain.system.schemas import Readiness

REMOTE_CHECK_PREFIX = "remote_model:"
"""Checks of remote models other than the default: reported, but they do not gate /ready."""


def describe_urls(healths: list[UrlHealth]) -> str:
    """'ok' when every URL answered, else each URL's state (latency or error)."""
    parts = []
    for health in healths:
        if health.reachable:
            assert health.latency_ms is not None
            parts.append(f"{health.url} reachable in {health.latency_ms:.0f} ms")
        else:
            parts.append(f"{health.url} unreachable: {health.error}")
    return "; ".join(parts)


async def readiness(
    db: AsyncEngine, ledger: Ledger, engine: InferenceRouter, default_model: str
) -> Readiness:
    checks: dict[str, str] = {}
    try:
        async with db.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
        checks["schema"] = "ok" if await schema_is_current(db) else "outdated"
        checks["ledger_schema"] = "ok" if await ledger.schema_is_current() else "outdated"
    except Exception as exc:  # any failure means not ready; the reason is reported
        checks["database"] = f"unreachable: {type(exc).__name__}"
    by_model: dict[str, list[UrlHealth]] = {}
    for health in await engine.remote_health():
        by_model.setdefault(health.model_id, []).append(health)
    status = next((m for m in engine.models() if m.id == default_model), None)
    if status is None:
        checks["default_model"] = f"{default_model} is not in the catalog"
    elif default_model in by_model:
        healths = by_model[default_model]
        reachable = any(health.reachable for health in healths)
        checks["default_model"] = "ok" if reachable else describe_urls(healths)
    elif status.loading_percent is not None:
        checks["default_model"] = (
            f"{default_model} is loading: {status.loading_percent}% ({status.loading_stage})"
        )
    elif not status.loaded:
        checks["default_model"] = f"{default_model} is not loaded"
    else:
        checks["default_model"] = "ok"
    ready = all(value == "ok" for value in checks.values())
    for model_id, healths in by_model.items():
        checks[f"{REMOTE_CHECK_PREFIX}{model_id}"] = describe_urls(healths)
    loading_percent = None if status is None else status.loading_percent
    return Readiness(ready, checks, loading_percent)


def refresh_gauges(engine: InferenceRouter | None, active_streams: int | None) -> None:
    """Bring state gauges up to date just before /metrics renders them."""
    metrics.PROCESS_RSS_BYTES.set(psutil.Process().memory_info().rss)
    if engine is None or active_streams is None:
        return
    metrics.ACTIVE_STREAMS.set(active_streams)
    queue_depth = 0
    for model in engine.models():
        metrics.MODEL_LOADED.labels(model.id).set(1 if model.loaded else 0)
        metrics.MODEL_AVAILABLE.labels(model.id).set(1 if model.available else 0)
        if model.loaded:
            queue_depth += engine.load_snapshot(model.id).waiting
    metrics.QUEUE_DEPTH.set(queue_depth)
