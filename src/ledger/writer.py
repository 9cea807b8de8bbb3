"""The per-process single writer: group commit of ledger commands.

Callers put commands on a bounded asyncio queue and await a future. One task drains up to
`batch_size` commands and hands the batch to one write transaction that reads the heads of the
batch's accounts in one statement (locked, in sorted order, on PostgreSQL), reloads any account
another process has moved since it was cached, looks up earlier outcomes of the batch's
idempotency keys in one statement, decides every command in order against in-memory state,
writes all events/refusals/snapshots with one executemany per table and commits; only then are
the futures resolved and the cache updated. Few statements per batch is where the speed is. On
SQLite the transaction runs in the writer's own thread on a pysqlite connection (one hand-off
per batch instead of one per statement, which is what aiosqlite costs); on PostgreSQL it runs
through `run_sync` on the asyncpg connection. The unique constraints on (account_id, sequence)
and (account_id, idempotency_key) are the backstop: a violation rolls the batch back and it is
retried a bounded number of times against fresh state.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import Connection

from ledger.clock import Clock
from ledger.domain import (
    AccountState,
    CaptureHold,
    Command,
    Event,
    EventType,
    Limits,
    Refund,
    RefundTarget,
    ReleaseHold,
    complete,
    decide,
    parse_event_id,
    to_us,
)
from ledger.errors import (
    AccountNotFound,
    IdempotencyConflict,
    LedgerBusy,
    LedgerClosed,
    LedgerError,
    StorageError,
)
from ledger.settings import LedgerSettings
from ledger.storage.store import AccountHead, BatchWrite, EventStore, Refusal, Snapshot

logger = structlog.get_logger("ledger")


@dataclass(frozen=True, slots=True)
class Outcome:
    """A command's effect: its event, and whether this answer replays an earlier one."""

    event: Event
    replayed: bool
    owner_id: str


@dataclass(slots=True)
class _Pending:
    command: Command
    future: asyncio.Future[Outcome]
    record_refusal: bool
    # Computed by the caller, off the writer's serial path.
    fingerprint: str
    # The caller's context variables (e.g. the request id a web request bound to structlog):
    # the outcome is logged inside them, so ledger lines carry the request that caused them.
    context: contextvars.Context


@dataclass(slots=True)
class _BatchContext:
    """What one batch learns while deciding its commands in order."""

    decided: dict[tuple[str, str], tuple[str, Outcome | LedgerError]] = field(default_factory=dict)
    resolved_holds: set[str] = field(default_factory=set)
    refunded: dict[str, int] = field(default_factory=dict)
    written: dict[str, Event] = field(default_factory=dict)


_STOP = None
_Results = list[Outcome | LedgerError]


class Writer:
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
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(maxsize=settings.queue_size)
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
        pending = _Pending(
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

    async def _process(self, batch: list[_Pending]) -> None:
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
                if self._store.is_retryable(exc):
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

    async def _commit(self, batch: list[_Pending]) -> tuple[_Results, dict[str, AccountState]]:
        """Decide and write one batch in one transaction; the cache is updated by the caller
        only after the commit succeeded."""
        engines = self._store.engines
        if engines.writer_thread is not None:
            # SQLite: the whole transaction in the writer's thread, one hand-off per batch.
            return await asyncio.get_running_loop().run_in_executor(
                self._thread, self._commit_in_thread, batch
            )
        async with engines.write.begin() as connection:
            return await connection.run_sync(self._decide_and_write, batch)

    def _commit_in_thread(self, batch: list[_Pending]) -> tuple[_Results, dict[str, AccountState]]:
        engine = self._store.engines.writer_thread
        assert engine is not None
        with engine.begin() as connection:
            return self._decide_and_write(connection, batch)

    def _decide_and_write(
        self, connection: Connection, batch: list[_Pending]
    ) -> tuple[_Results, dict[str, AccountState]]:
        store = self._store
        heads = store.lock_heads(connection, (p.command.account_id for p in batch))
        # The time is read once the heads are locked: a batch that waited for another
        # process's lock must not record (or judge expiries at) a time before that commit.
        now_us = to_us(self._clock())
        states: dict[str, AccountState] = {}
        for account_id, head in heads.items():
            cached = self._cache.get(account_id)
            if cached is None or (cached.sequence, cached.head_hash) != (
                head.sequence,
                head.head_hash,
            ):
                # Another process wrote (or first touch): rebuild from snapshot plus tail.
                cached = store.load_state(connection, account_id, head.owner_id)
                if (cached.sequence, cached.head_hash) != (head.sequence, head.head_hash):
                    raise StorageError(f"account {account_id} head disagrees with its log")
            states[account_id] = cached.copy()
        keys = [
            (p.command.account_id, p.command.idempotency_key)
            for p in batch
            if p.command.account_id in heads
        ]
        earlier = store.find_outcomes(connection, keys)
        context = _BatchContext()
        write = BatchWrite()
        results: _Results = [
            self._decide_one(connection, pending, states, heads, earlier, context, write, now_us)
            for pending in batch
        ]
        store.write(connection, write)
        return results, states

    def _decide_one(
        self,
        connection: Connection,
        pending: _Pending,
        states: dict[str, AccountState],
        heads: dict[str, AccountHead],
        earlier: dict[tuple[str, str], Event | Refusal],
        context: _BatchContext,
        write: BatchWrite,
        now_us: int,
    ) -> Outcome | LedgerError:
        command = pending.command
        account_id = command.account_id
        if account_id not in heads:
            return AccountNotFound(account_id)
        owner_id = heads[account_id].owner_id
        key = (account_id, command.idempotency_key)
        fingerprint = pending.fingerprint
        previous: tuple[str, Outcome | LedgerError] | None = context.decided.get(key)
        if previous is None and key in earlier:
            stored = earlier[key]
            if isinstance(stored, Event):
                previous = (stored.fingerprint, Outcome(stored, True, owner_id))
            else:
                previous = (stored.fingerprint, stored.error)
        if previous is not None:
            if previous[0] != fingerprint:
                return IdempotencyConflict(command.idempotency_key)
            answer = previous[1]
            if isinstance(answer, Outcome):
                return Outcome(answer.event, True, owner_id)
            return answer
        state = states[account_id]
        try:
            hold_was_placed = False
            refund_target = None
            if (
                isinstance(command, CaptureHold | ReleaseHold)
                and command.hold_id not in state.holds
            ):
                hold_was_placed = command.hold_id in context.resolved_holds or (
                    self._was_placed(connection, state, command.hold_id)
                )
            if isinstance(command, Refund):
                refund_target = self._refund_target(connection, state, command, context)
            draft = decide(
                state,
                command,
                now_us=now_us,
                limits=self._limits,
                hold_was_placed=hold_was_placed,
                refund_target=refund_target,
            )
        except LedgerError as error:
            if error.recorded and pending.record_refusal:
                write.refusals.append(
                    Refusal(account_id, command.idempotency_key, fingerprint, error, now_us)
                )
                context.decided[key] = (fingerprint, error)
            return error
        event = complete(
            state,
            draft,
            idempotency_key=command.idempotency_key,
            fingerprint=fingerprint,
            recorded_at_us=now_us,
        )
        write.events.append(event)
        context.written[event.event_id] = event
        if event.event_type is EventType.HOLD_PLACED:
            assert event.hold_id is not None
            write.holds_opened[event.hold_id] = event
        elif event.event_type in (EventType.HOLD_CAPTURED, EventType.HOLD_RELEASED):
            assert event.hold_id is not None
            if write.holds_opened.pop(event.hold_id, None) is None:
                write.holds_closed.append(event.hold_id)
            context.resolved_holds.add(event.hold_id)
        elif event.event_type is EventType.REFUNDED:
            assert event.refers_to is not None
            context.refunded[event.refers_to] = (
                context.refunded.get(event.refers_to, 0) + event.amount
            )
        if event.sequence % self._settings.snapshot_every == 0:
            write.snapshots.append(
                Snapshot(
                    account_id,
                    state.sequence,
                    state.posted,
                    state.held,
                    state.holds_record(),
                    state.head_hash,
                    now_us,
                )
            )
        write.heads[account_id] = AccountHead(account_id, owner_id, state.sequence, state.head_hash)
        outcome = Outcome(event, False, owner_id)
        context.decided[key] = (fingerprint, outcome)
        return outcome

    def _was_placed(self, connection: Connection, state: AccountState, hold_id: str) -> bool:
        """Whether a hold id that is not active names a hold once placed on this account."""
        parsed = parse_event_id(hold_id)
        if parsed is None or parsed[0] != state.account_id or parsed[1] > state.sequence:
            return False
        event = self._store.event_at(connection, *parsed)
        return event is not None and event.event_type is EventType.HOLD_PLACED

    def _refund_target(
        self,
        connection: Connection,
        state: AccountState,
        command: Refund,
        context: _BatchContext,
    ) -> RefundTarget | None:
        # Only the canonical id names an event (parse_event_id), and what was refunded is
        # counted under the event's own id: never under the caller's spelling of it.
        parsed = parse_event_id(command.event_id)
        if parsed is None or parsed[0] != state.account_id or parsed[1] > state.sequence:
            return None
        event = context.written.get(command.event_id)
        if event is None:
            event = self._store.event_at(connection, *parsed)
        if event is None:
            return None
        event_id = event.event_id
        refunded = self._store.refunded_total(connection, state.account_id, event_id)
        return RefundTarget(
            event_id, event.event_type, event.amount, refunded + context.refunded.get(event_id, 0)
        )


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
