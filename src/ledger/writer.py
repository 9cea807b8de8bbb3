"""The per-process single writer: group commit of ledger commands.

Callers put commands on a bounded asyncio queue and await a future. One task drains up to
`batch_size` commands and hands the batch to one write transaction in which
`ledger.batch.BatchPlanner` decides every command and writes the result; only after the commit
are the futures resolved and the cache of account states updated. Few statements per batch is
where the speed is. On SQLite the transaction runs in the writer's own thread on a pysqlite
connection (one hand-off per batch instead of one per statement, which is what aiosqlite
costs); on PostgreSQL it runs through `run_sync` on the asyncpg connection. The unique
constraints on (account_id, sequence) and (account_id, idempotency_key) are the backstop: a
violation rolls the batch back and it is retried a bounded number of times against fresh state.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from ledger.batch import BatchPlanner, Outcome, Pending, Results
from ledger.clock import Clock
from ledger.domain import AccountState, Command, Limits
from ledger.errors import LedgerBusy, LedgerClosed, LedgerError, StorageError
from ledger.settings import LedgerSettings
from ledger.storage.persistence import EventStore

logger = structlog.get_logger("ledger")


_STOP = None


class Writer:
    """Queues commands and commits them in batches, one transaction per batch."""

    def __init__(self, store: EventStore, settings: LedgerSettings, clock: Clock) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._limits = Limits(
            max_amount=settings.max_amount,
            max_balance=settings.max_balance,
            max_active_holds=settings.max_active_holds_per_account,
            hold_ttl_default_s=settings.hold_ttl_default_s,
            hold_ttl_max_s=settings.hold_ttl_max_s,
        )
        self._planner = BatchPlanner(
            store, self._limits, clock, snapshot_every=settings.snapshot_every
        )
        self._queue: asyncio.Queue[Pending | None] = asyncio.Queue(maxsize=settings.queue_size)
        self._cache: OrderedDict[str, AccountState] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches_committed = 0
        # SQLite batches run here (one thread: pysqlite connections stay on it).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._queue.put(_STOP)
        if self._task is not None:
            await self._task
        self._thread.shutdown(wait=True)
        # Anything queued behind the stop marker never runs.
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending is not None and not pending.future.done():
                pending.future.set_exception(LedgerClosed())

    async def submit(self, command: Command, *, record_refusal: bool = True) -> Outcome:
        """Queue a command and wait for its committed outcome (or its refusal, raised)."""
        if self._closed:
            raise LedgerClosed()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        timeout_s = self._settings.command_timeout_s
        pending = Pending(
            command, future, record_refusal, command.fingerprint(), contextvars.copy_context()
        )
        try:
            async with asyncio.timeout(timeout_s):
                if self._queue.full():
                    await self._queue.put(pending)  # back-pressure: wait for room
                else:
                    self._queue.put_nowait(pending)
                return await future
        except TimeoutError:
            raise LedgerBusy(
                f"the ledger writer did not answer within {timeout_s} s; the command may still "
                "be applied: retry with the same idempotency key"
            ) from None

    def forget(self, account_id: str) -> None:
        self._cache.pop(account_id, None)

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            # One yield lets callers that are ready to submit join this batch.
            await asyncio.sleep(0)
            batch = [first]
            while len(batch) < self._settings.batch_size and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            await self._process(batch)

    async def _process(self, batch: list[Pending]) -> None:
        attempt = 0
        while True:
            try:
                results, states = await self._commit(batch)
                break
            except Exception as exc:
                for pending in batch:
                    self.forget(pending.command.account_id)
                if self._store.is_retryable(exc) and attempt < self._settings.write_retries:
                    attempt += 1
                    await asyncio.sleep(self._settings.retry_backoff_s * 2 ** (attempt - 1))
                    continue
                if len(batch) > 1 and not self._store.is_retryable(exc):
                    # One bad command must not fail its neighbours: run each alone.
                    logger.warning("ledger_batch_split", error=repr(exc), commands=len(batch))
                    for pending in batch:
                        await self._process([pending])
                    return
                error: LedgerError
                if isinstance(exc, LedgerError):
                    error = exc  # already typed (an InvariantViolation): pass it on as it is
                elif self._store.is_retryable(exc):
                    error = LedgerBusy(f"write conflict persisted after {attempt} retries: {exc}")
                else:
                    error = StorageError(f"ledger write failed: {type(exc).__name__}: {exc}")
                logger.error("ledger_batch_failed", error=str(error), commands=len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                return
        self.batches_committed += 1
        for account_id, state in states.items():
            self._cache[account_id] = state
            self._cache.move_to_end(account_id)
        while len(self._cache) > self._settings.cache_max_accounts:
            self._cache.popitem(last=False)
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue  # caller gave up waiting; the effect stands and a retry replays it
            if isinstance(result, LedgerError):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        # One bind per batch, not per command: binding the lazy module logger builds a new
        # bound logger each time, which cost more than the log call itself.
        log = logger.bind()
        for pending, result in zip(batch, results, strict=True):
            known = states.get(pending.command.account_id)
            owner_id = None if known is None else known.owner_id
            pending.context.run(_log_outcome, log, pending.command, result, owner_id)

    async def _commit(self, batch: list[Pending]) -> tuple[Results, dict[str, AccountState]]:
        """Decide and write one batch in one transaction; the cache is updated by the caller
        only after the commit succeeded."""
        engines = self._store.engines
        if engines.writer_thread is not None:
            # SQLite: the whole transaction in the writer's thread, one hand-off per batch.
            return await asyncio.get_running_loop().run_in_executor(
                self._thread, self._commit_in_thread, batch
            )
        async with engines.write.begin() as connection:
            return await connection.run_sync(self._planner.decide_and_write, batch, self._cache)

    def _commit_in_thread(self, batch: list[Pending]) -> tuple[Results, dict[str, AccountState]]:
        engine = self._store.engines.writer_thread
        # Only called when `_commit` saw the engine: narrowing for the type checker, not a check.
        assert engine is not None
        with engine.begin() as connection:
            return self._planner.decide_and_write(connection, batch, self._cache)


def _log_outcome(
    log: Any, command: Command, result: Outcome | LedgerError, owner_id: str | None
) -> None:
    amount = getattr(command, "amount", None)
    metadata = getattr(command, "metadata", {}) or {}
    if isinstance(result, LedgerError):
        log.info(
            "credit_transaction",
            outcome="refused",
            error=result.code,
            account_id=command.account_id,
            owner_id=owner_id,
            command=type(command).__name__,
            amount=amount,
            model=metadata.get("model"),
            idempotency_key=command.idempotency_key,
        )
        return
    event = result.event
    log.info(
        "credit_transaction",
        outcome="replayed" if result.replayed else "applied",
        account_id=event.account_id,
        owner_id=result.owner_id,
        type=str(event.event_type),
        amount=event.amount,
        event_id=event.event_id,
        model=event.metadata.get("model"),
        posted_after=event.posted_after,
        held_after=event.held_after,
    )
