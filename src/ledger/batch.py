"""Planning one writer batch: decide its commands in order and collect what to write.

Inside the writer's one transaction, `BatchPlanner.decide_and_write` reads the heads of the
batch's accounts (locked on PostgreSQL), reloads any account another process moved since it
was cached, looks up earlier outcomes of the batch's idempotency keys in one statement, decides
every command in order against in-memory state (`ledger.domain.decide`), and hands everything
to the store's `write` as one `BatchWrite`. What a command is answered (`Outcome` or a typed
refusal) is returned; the writer resolves the callers' futures only after the commit.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Connection

from ledger.clock import Clock
from ledger.domain import (
    AccountState,
    CaptureHold,
    Command,
    Event,
    EventDraft,
    EventType,
    Limits,
    PlaceHold,
    Refund,
    RefundTarget,
    ReleaseHold,
    budget_ids,
    complete,
    decide,
    hold_id_of,
    parse_event_id,
    refers_to_of,
    to_us,
)
from ledger.errors import AccountNotFound, IdempotencyConflict, LedgerError, StorageError
from ledger.storage.budget_usage import budget_used
from ledger.storage.persistence import (
    AccountHead,
    BatchWrite,
    BudgetHold,
    EventStore,
    Refusal,
    Snapshot,
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A command's effect: its event, and whether this answer replays an earlier one."""

    event: Event
    replayed: bool
    owner_id: str


@dataclass(slots=True)
class Pending:
    """A submitted command waiting in the writer's queue for its batch."""

    command: Command
    future: asyncio.Future[Outcome]
    record_refusal: bool
    # Computed by the caller, off the writer's serial path.
    fingerprint: str
    # The caller's context variables (e.g. the request id a web request bound to structlog):
    # the outcome is logged inside them, so ledger lines carry the request that caused them.
    context: contextvars.Context


Results = list[Outcome | LedgerError]
_Answer = tuple[str, Outcome | LedgerError]  # (fingerprint, what it was answered)


@dataclass(slots=True)
class _BatchContext:
    """What one batch learns while deciding its commands in order."""

    heads: dict[str, AccountHead]
    states: dict[str, AccountState]
    earlier: dict[tuple[str, str], Event | Refusal]
    now_us: int
    write: BatchWrite = field(default_factory=BatchWrite)
    decided: dict[tuple[str, str], _Answer] = field(default_factory=dict)
    resolved_holds: set[str] = field(default_factory=set)
    refunded: dict[str, int] = field(default_factory=dict)
    written: dict[str, Event] = field(default_factory=dict)
    # Credits this batch placed under each (account, budget): not yet in the table.
    budget_placed: dict[tuple[str, str], int] = field(default_factory=dict)


class BatchPlanner:
    """Decides a batch's commands against the accounts' states and writes the result."""

    def __init__(
        self, store: EventStore, limits: Limits, clock: Clock, *, snapshot_every: int
    ) -> None:
        self._store = store
        self._limits = limits
        self._clock = clock
        self._snapshot_every = snapshot_every

    def decide_and_write(
        self,
        connection: Connection,
        batch: list[Pending],
        cache: Mapping[str, AccountState],
    ) -> tuple[Results, dict[str, AccountState]]:
        """Answers of the batch's commands and the accounts' new states (to cache after the
        commit); `cache` is only read."""
        store = self._store
        heads = store.lock_heads(connection, (p.command.account_id for p in batch))
        # The time is read once the heads are locked: a batch that waited for another
        # process's lock must not record (or judge expiries at) a time before that commit.
        now_us = to_us(self._clock())
        states = {
            account_id: self._current_state(connection, head, cache.get(account_id))
            for account_id, head in heads.items()
        }
        keys = [
            (p.command.account_id, p.command.idempotency_key)
            for p in batch
            if p.command.account_id in heads
        ]
        context = _BatchContext(heads, states, store.find_outcomes(connection, keys), now_us)
        results: Results = [self._decide_one(connection, pending, context) for pending in batch]
        store.write(connection, context.write)
        return results, states

    def _current_state(
        self, connection: Connection, head: AccountHead, cached: AccountState | None
    ) -> AccountState:
        """A copy of the cached state, or the stored one if another process moved the head."""
        if cached is None or (cached.sequence, cached.head_hash) != (
            head.sequence,
            head.head_hash,
        ):
            # Another process wrote (or first touch): rebuild from snapshot plus tail.
            cached = self._store.load_state(connection, head.account_id, head.owner_id)
            if (cached.sequence, cached.head_hash) != (head.sequence, head.head_hash):
                raise StorageError(f"account {head.account_id} head disagrees with its log")
        return cached.copy()

    def _previous_answer(
        self, pending: Pending, context: _BatchContext, owner_id: str
    ) -> _Answer | None:
        """The answer an earlier command with this key got, in this batch or before."""
        command = pending.command
        key = (command.account_id, command.idempotency_key)
        previous = context.decided.get(key)
        if previous is None and key in context.earlier:
            stored = context.earlier[key]
            if isinstance(stored, Event):
                return (stored.fingerprint, Outcome(stored, True, owner_id))
            return (stored.fingerprint, stored.error)
        return previous

    def _decide_one(
        self, connection: Connection, pending: Pending, context: _BatchContext
    ) -> Outcome | LedgerError:
        command = pending.command
        account_id = command.account_id
        if account_id not in context.heads:
            return AccountNotFound(account_id)
        owner_id = context.heads[account_id].owner_id
        key = (account_id, command.idempotency_key)
        fingerprint = pending.fingerprint
        previous = self._previous_answer(pending, context, owner_id)
        if previous is not None:
            if previous[0] != fingerprint:
                return IdempotencyConflict(command.idempotency_key)
            answer = previous[1]
            if isinstance(answer, Outcome):
                return Outcome(answer.event, True, owner_id)
            return answer
        state = context.states[account_id]
        try:
            draft = self._decide(connection, state, command, context)
        except LedgerError as error:
            if error.recorded and pending.record_refusal:
                context.write.refusals.append(
                    Refusal(account_id, command.idempotency_key, fingerprint, error, context.now_us)
                )
                context.decided[key] = (fingerprint, error)
            return error
        # Outside the try: an InvariantViolation here is a bug to fail the batch, not a refusal.
        event = complete(
            state,
            draft,
            idempotency_key=command.idempotency_key,
            fingerprint=fingerprint,
            recorded_at_us=context.now_us,
        )
        self._record(event, state, owner_id, context)
        self._record_budget_use(command, event, context)
        outcome = Outcome(event, False, owner_id)
        context.decided[key] = (fingerprint, outcome)
        return outcome

    def _decide(
        self,
        connection: Connection,
        state: AccountState,
        command: Command,
        context: _BatchContext,
    ) -> EventDraft:
        """The event the rules choose for the command, or its typed refusal raised."""
        hold_was_placed = False
        refund_target = None
        if isinstance(command, CaptureHold | ReleaseHold) and command.hold_id not in state.holds:
            hold_was_placed = command.hold_id in context.resolved_holds or (
                self._was_placed(connection, state, command.hold_id)
            )
        if isinstance(command, Refund):
            refund_target = self._refund_target(connection, state, command, context)
        budget_used = None
        if isinstance(command, PlaceHold) and command.budgets:
            budget_used = self._budget_used(connection, state.account_id, command, context)
        return decide(
            state,
            command,
            now_us=context.now_us,
            limits=self._limits,
            hold_was_placed=hold_was_placed,
            refund_target=refund_target,
            budget_used=budget_used,
        )

    def _budget_used(
        self, connection: Connection, account_id: str, command: PlaceHold, context: _BatchContext
    ) -> dict[tuple[str, str], int]:
        """Each limited budget's use in its current period: stored rows plus this batch's
        holds (all placed at the batch's time, so inside every current period)."""
        used: dict[tuple[str, str], int] = {}
        for budget in command.budgets:
            if budget.limit is None:
                continue
            start_us, end_us = budget.window_us(context.now_us)
            stored = budget_used(connection, account_id, budget.budget_id, start_us, end_us)
            used[(budget.budget_id, budget.period)] = stored + context.budget_placed.get(
                (account_id, budget.budget_id), 0
            )
        return used

    def _record(
        self, event: Event, state: AccountState, owner_id: str, context: _BatchContext
    ) -> None:
        """Add a decided event to the batch's writes and to what later commands must see."""
        write = context.write
        write.events.append(event)
        context.written[event.event_id] = event
        if event.event_type is EventType.HOLD_PLACED:
            write.holds_opened[hold_id_of(event)] = event
        elif event.event_type in (EventType.HOLD_CAPTURED, EventType.HOLD_RELEASED):
            hold_id = hold_id_of(event)
            if write.holds_opened.pop(hold_id, None) is None:
                write.holds_closed.append(hold_id)
            context.resolved_holds.add(hold_id)
        elif event.event_type is EventType.REFUNDED:
            refers_to = refers_to_of(event)
            context.refunded[refers_to] = context.refunded.get(refers_to, 0) + event.amount
        if event.sequence % self._snapshot_every == 0:
            write.snapshots.append(
                Snapshot(
                    state.account_id,
                    state.sequence,
                    state.posted,
                    state.held,
                    state.holds_record(),
                    state.head_hash,
                    context.now_us,
                )
            )
        write.heads[state.account_id] = AccountHead(
            state.account_id, owner_id, state.sequence, state.head_hash
        )

    def _record_budget_use(self, command: Command, event: Event, context: _BatchContext) -> None:
        """What the event changes in the budget table (every capture and release is written:
        the table, not the state, knows which holds had budgets)."""
        write = context.write
        if isinstance(command, PlaceHold):
            for budget_id in budget_ids(command.budgets):
                key = (event.account_id, budget_id)
                context.budget_placed[key] = context.budget_placed.get(key, 0) + event.amount
                write.budget_holds.append(
                    BudgetHold(
                        event.event_id, budget_id, event.account_id, context.now_us, event.amount
                    )
                )
        elif event.event_type is EventType.HOLD_CAPTURED:
            write.budget_captures.append((hold_id_of(event), event.amount))
        elif event.event_type is EventType.HOLD_RELEASED:
            write.budget_releases.append(hold_id_of(event))

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
