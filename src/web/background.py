"""Periodic jobs of the service process: the expired-hold sweeper, the retention job that
clears old prompt and response text from model_interactions, the signing of ledger
checkpoints, the gauges' refresh and the shared state's renewals (`periodic_jobs`)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger import Ledger
from web.ledger_calls import counted
from web.logging import get_logger
from web.metrics import HOLDS_SWEPT
from web.settings import Settings
from web.tables import ModelInteractionRow, utc_now

log = get_logger(__name__)
# State gauges are refreshed this often in the background too: under `serve --workers` the
# process that answers /metrics reads the other processes' last values.
GAUGE_REFRESH_INTERVAL_S = 5.0
Job = Callable[[], Awaitable[object]]
PeriodicJob = tuple[str, float, Job]
"""(name, interval in seconds, job): what `run_every` runs."""


def periodic_jobs(
    settings: Settings,
    ledger: Ledger,
    sessions: async_sessionmaker[AsyncSession],
    *,
    checkpoint: Job,
    refresh_gauges: Job,
    renewals: Iterable[PeriodicJob],
) -> list[PeriodicJob]:
    """The service's periodic jobs; checkpoints only when their interval is above 0."""
    billing, chat = settings.billing, settings.chat
    jobs: list[PeriodicJob] = [
        ("sweep_expired_holds", billing.sweep_interval_s, lambda: sweep_expired_holds(ledger)),
        ("refresh_gauges", GAUGE_REFRESH_INTERVAL_S, refresh_gauges),
        *renewals,
        (
            "interaction_retention",
            chat.retention_interval_s,
            lambda: clear_old_interaction_text(sessions, chat.retention_days),
        ),
    ]
    if billing.checkpoint_interval_s > 0:
        jobs.insert(1, ("ledger_checkpoints", billing.checkpoint_interval_s, checkpoint))
    return jobs


async def sweep_expired_holds(ledger: Ledger) -> int:
    async with counted("sweep_expired_holds"):
        released = await ledger.sweep_expired_holds()
    if released:
        HOLDS_SWEPT.inc(released)
        log.info("expired_holds_released", count=released)
    return released


async def clear_old_interaction_text(
    sessions: async_sessionmaker[AsyncSession], retention_days: int
) -> int:
    """Null the prompt/response text of interactions older than the retention period; the
    token counts and credits stay (usage reports need them)."""
    cutoff = utc_now() - dt.timedelta(days=retention_days)
    async with sessions() as session:
        result = await session.execute(
            update(ModelInteractionRow)
            .where(
                ModelInteractionRow.created_at < cutoff,
                ModelInteractionRow.text_cleared_at.is_(None),
            )
            .values(prompt=None, response=None, text_cleared_at=utc_now())
        )
        await session.commit()
    cleared = int(getattr(result, "rowcount", 0) or 0)
    if cleared:
        log.info("interaction_text_cleared", count=cleared, retention_days=retention_days)
    return cleared


async def run_every(name: str, interval_s: float, job: Callable[[], Awaitable[object]]) -> None:
    """Run `job` now and then every `interval_s` until cancelled; a failure is logged and the
    next round still runs."""
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background_job_failed", job=name)
        await asyncio.sleep(interval_s)
