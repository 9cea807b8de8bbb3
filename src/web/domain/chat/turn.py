"""One chat turn after it passed every check: `Turn` holds its state (claim, hold, engine
stream, the `Reply` generated so far), `PreparedChat` is what a front end gets from
`ChatService.prepare`: iterate `events()` once, `cancel()` a chat that will never be streamed,
`stop()` to end it and get the settled outcome."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from inference.events import Finished, ModelStatus, TextDelta
from web.chat_slots import ChatSlot
from web.domain.accounts.schemas import Identity
from web.domain.billing.prices import ModelPrice
from web.domain.chat.inputs import NUL, ChatInput
from web.domain.chat.schemas import ChatCompleted, ChatEvent, ChatStarted
from web.domain.chat.settlement import StopReason
from web.logging import get_logger

log = get_logger(__name__)


class Reply:
    """The reply as the engine generates it, read by the consumer at its own pace.

    The generation pump appends to it and never waits for the reader, so generation and
    settlement do not depend on the client reading; a reader that falls behind gets the text
    it missed in one piece. It never holds more than the reply itself, which is bounded by the
    request's token limit (each delta is at least one token) and kept anyway to be stored with
    the outcome."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.generated_deltas = 0
        """Non-empty deltas the engine produced; each is at least one generated token."""
        self.ended = False
        """The generation has ended (the engine's final event, or a failure)."""
        self._changed = asyncio.Event()

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def add(self, delta: str) -> None:
        if delta:
            self.generated_deltas += 1
        # A model can emit NUL (tiny or confused models do); it renders as nothing and
        # PostgreSQL text cannot store it, so it never leaves the engine boundary.
        text = delta.replace(NUL, "")
        if text:
            self._parts.append(text)
            self._changed.set()

    def end(self) -> None:
        self.ended = True
        self._changed.set()

    async def read(self, cursor: int) -> tuple[str, int] | None:
        """The text after the first `cursor` parts (waiting until there is some) and the new
        cursor; None once the generation has ended and everything was read."""
        while cursor == len(self._parts):
            if self.ended:
                return None
            self._changed.clear()
            await self._changed.wait()
        return "".join(self._parts[cursor:]), len(self._parts)


@dataclasses.dataclass
class Turn:
    """Everything about one started, not yet settled generation."""

    identity: Identity
    chat_input: ChatInput
    request_id: str
    conversation_id: str | None
    model: ModelStatus
    """The model that answers: the requested one, or its fallback when that cannot load."""
    price: ModelPrice
    """The price of `model`, at which the hold was placed."""
    requested_model_id: str
    hold_id: str
    hold_credits: int
    estimated_prompt_tokens: int
    prompt_text: str
    stream: AsyncIterator[TextDelta | Finished]
    first_event: TextDelta | Finished
    started_at: float
    billing_s: float = 0.0
    """Time spent on billing (claim, hold, capture or release, records)."""
    billing_phases_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    """`billing_s` by phase (claim, budgets, hold, resolve, exchange, outcome), logged with
    `chat_settled`: which part of the billing time a slow chat spent where. The budgets are
    read inside the claim's transaction, and the exchange and outcome share one."""
    max_tokens_shrunk_to: int | None = None
    """The completion limit was lowered to this to fit the balance or a budget."""
    reply: Reply = dataclasses.field(default_factory=Reply)
    stopped: StopReason | None = None
    """Why the generation was asked to end early: the consumer left (`aborted`) or shutdown
    cut it (`cancelled`); None while it runs its course."""
    failure: Exception | None = None
    """What the engine's stream raised, if it failed instead of ending with its final event."""
    settlement: asyncio.Task[ChatCompleted] | None = None
    """The one task that drains this turn's generation and settles it, once streaming began."""
    slot: ChatSlot | None = None
    """The user's concurrency slot this turn holds, given back when it settles."""

    def give_back_slot(self) -> None:
        if self.slot is not None:
            self.slot.release()


class TurnRunner(Protocol):
    """What runs a prepared turn (`ChatStreams`)."""

    def run(self, turn: Turn) -> AsyncGenerator[ChatEvent, None]: ...

    async def abandon(self, turn: Turn) -> None: ...


class PreparedChat:
    """A chat that passed every check: a live turn, or the replay of a stored outcome."""

    def __init__(
        self, runner: TurnRunner, turn: Turn | None, replay: list[ChatEvent] | None = None
    ) -> None:
        if (turn is None) == (replay is None):
            raise ValueError("a prepared chat is either a live turn or a replay")
        self._runner = runner
        self._turn = turn
        self._replay = replay
        self._consumed = False
        self._events: AsyncGenerator[ChatEvent, None] | None = None

    @property
    def request_id(self) -> str:
        if self._turn is not None:
            return self._turn.request_id
        assert self._replay is not None
        first = self._replay[0]
        assert isinstance(first, ChatStarted)
        return first.request_id

    def events(self) -> AsyncGenerator[ChatEvent, None]:
        """start, delta..., done; call once. Closing it early (Stop, disconnect) ends the
        generation and settles the turn at once."""
        if self._events is not None:
            raise RuntimeError("a prepared chat streams once")
        self._events = self._stream()
        return self._events

    async def _stream(self) -> AsyncGenerator[ChatEvent, None]:
        # Consumed from the first iteration on, not from events(): a generator made but never
        # iterated (the client left first) is still released by cancel().
        if self._consumed:
            raise RuntimeError("this prepared chat was cancelled or already streamed")
        self._consumed = True
        if self._replay is not None:
            for event in self._replay:
                yield event
            return
        assert self._turn is not None
        # aclosing: when the consumer stops early (Stop, disconnect), closing this generator
        # closes the runner's at once, so the partial capture settles now rather than at
        # garbage collection.
        async with contextlib.aclosing(self._runner.run(self._turn)) as events:
            async for event in events:
                yield event

    async def cancel(self) -> None:
        """Release the hold of a prepared chat that will never be streamed."""
        if self._turn is not None and not self._consumed:
            self._consumed = True
            await self._runner.abandon(self._turn)

    async def stop(self) -> ChatCompleted | None:
        """End the chat now (generation stops, what was generated is settled per policy) and
        return its settled outcome; None when it was never streamed (released in full) or its
        settlement failed (logged; an unresolved hold expires and the sweeper releases it)."""
        if self._replay is not None:
            done = self._replay[-1]
            return done if isinstance(done, ChatCompleted) else None
        turn = self._turn
        assert turn is not None
        if self._events is not None:
            await self._events.aclose()
        if turn.settlement is None:
            await self.cancel()  # never streamed: released in full, nothing to report
            return None
        try:
            return await asyncio.shield(turn.settlement)
        except Exception as exc:
            log.error("chat_settlement_failed", request_id=turn.request_id, error=str(exc))
            return None
