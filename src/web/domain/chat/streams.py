"""Running chat turns. Each turn's generation is drained by its own task, the pump, which
settles the turn's hold exactly once when the generation ends (`settler.py`), whatever the
consumer does: it reads to the end, stops reading, disconnects or is cancelled. The consumer
reads the turn's `Reply` at its own pace and gets the settled outcome last. A consumer that
leaves early asks the engine to stop; the pump then settles what was generated. Also owns
shutdown: refuse new chats, end running generations after the grace."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncGenerator

from inference.events import Finished, TextDelta
from inference.router import InferenceBackend
from web import metrics
from web.domain.chat.claims import ChatClaims
from web.domain.chat.conversations import ConversationsService
from web.domain.chat.holds import ChatHolds
from web.domain.chat.schemas import ChatCompleted, ChatDelta, ChatEvent, ChatStarted
from web.domain.chat.settlement import StopReason, StreamEnd
from web.domain.chat.settler import SettledListener, TurnSettler, close_stream
from web.domain.chat.turn import Turn
from web.errors import ShuttingDown
from web.logging import get_logger

log = get_logger(__name__)


class ChatStreams:
    """The running turns of one chat service."""

    def __init__(
        self,
        engine: InferenceBackend,
        claims: ChatClaims,
        holds: ChatHolds,
        conversations: ConversationsService,
        partial_capture_on_disconnect: bool,
    ) -> None:
        self._engine = engine
        self._claims = claims
        self._holds = holds
        self._settler = TurnSettler(claims, holds, conversations, partial_capture_on_disconnect)
        self.closing = False
        self._active: dict[str, Turn] = {}
        """Turns whose pump runs: generating, or settling what was generated."""
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active_count(self) -> int:
        return len(self._active)

    def add_settled_listener(self, listener: SettledListener) -> None:
        """Call `listener(identity, done)` after each turn settles (web.domain.alerts)."""
        self._settler.listeners.append(listener)

    @property
    def billing_overhead_ms(self) -> collections.deque[float]:
        """Billing time of recent requests (for `ledgerchat bench service`)."""
        return self._settler.billing_overhead_ms

    async def run(self, turn: Turn) -> AsyncGenerator[ChatEvent, None]:
        """ChatStarted, ChatDelta..., ChatCompleted. The turn is settled by its pump, started
        here, however this consumer ends."""
        pump = self._start_pump(turn)
        try:
            yield ChatStarted(
                request_id=turn.request_id,
                conversation_id=turn.conversation_id,
                model=turn.model.id,
                hold_credits=turn.hold_credits,
            )
            cursor = 0
            while (chunk := await turn.reply.read(cursor)) is not None:
                text, cursor = chunk
                yield ChatDelta(text=text)
            done = await asyncio.shield(pump)
            if turn.failure is not None:
                raise turn.failure
            if turn.stopped == "cancelled" and done.cost_credits == 0:
                # Cut by `end_all`: released in full (reason `cancelled`); the client is told
                # why with an `error` event rather than a `done`.
                raise ShuttingDown("the service is shutting down; the answer was cut, not charged")
            yield done
        finally:
            if not pump.done():
                # The consumer left first (disconnect, Stop, a cancelled task): stop generating;
                # the pump settles what was generated. Waited for, shielded: a second
                # cancellation leaves the pump running to completion.
                self._stop(turn, "aborted")
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pump)

    def _start_pump(self, turn: Turn) -> asyncio.Task[ChatCompleted]:
        assert turn.settlement is None, "a turn is pumped once"
        task = asyncio.get_running_loop().create_task(self._pump(turn))
        turn.settlement = task
        self._active[turn.request_id] = turn
        self._idle.clear()
        metrics.ACTIVE_STREAMS.inc()

        def finished(task: asyncio.Task[ChatCompleted]) -> None:
            self._active.pop(turn.request_id, None)
            turn.give_back_slot()
            if not self._active:
                self._idle.set()
            metrics.ACTIVE_STREAMS.dec()
            if not task.cancelled() and task.exception() is not None:
                # The consumer, if still there, re-raises it; logged here in any case.
                log.error(
                    "chat_settlement_failed",
                    request_id=turn.request_id,
                    error=str(task.exception()),
                )

        task.add_done_callback(finished)
        return task

    async def _pump(self, turn: Turn) -> ChatCompleted:
        """Drain the generation into the turn's reply, then settle it: exactly once per turn,
        and independent of how fast (or whether) the consumer reads."""
        final = await self._drain(turn)
        end = StreamEnd(
            model_id=turn.model.id,
            estimated_prompt_tokens=turn.estimated_prompt_tokens,
            finished=final,
            stopped=turn.stopped,
            streamed_deltas=turn.reply.generated_deltas,
            closing=self.closing,
        )
        return await self._settler.settle(turn, end)

    async def _drain(self, turn: Turn) -> Finished | None:
        """The engine's events into `turn.reply` until its final event (returned); None when
        the stream failed or was cancelled (the settler then asks the stream for its count)."""
        event: TextDelta | Finished | None = turn.first_event
        try:
            while not isinstance(event, Finished):
                if event is None:
                    raise RuntimeError("the engine ended a stream without Finished")
                turn.reply.add(event.text)
                event = await anext(turn.stream, None)
            return event
        except asyncio.CancelledError:
            # Only the event loop's teardown cancels a pump: settle what there is, as a
            # shutdown cut, rather than leave the hold to expire.
            turn.stopped = turn.stopped or "cancelled"
            return None
        except Exception as exc:
            # The stream raised instead of ending: the consumer gets the error; what was
            # generated is settled as when the consumer leaves.
            log.exception("chat_stream_broken", request_id=turn.request_id)
            turn.failure = exc
            turn.stopped = turn.stopped or "aborted"
            return None
        finally:
            turn.reply.end()

    def _stop(self, turn: Turn, reason: StopReason) -> None:
        """Ask the engine to end a turn's generation early; its pump then settles it."""
        if turn.reply.ended:
            return  # generation is over: the pump settles it as it ended
        if turn.stopped is None:
            turn.stopped = reason
        self._engine.cancel(turn.request_id)

    async def abandon(self, turn: Turn) -> None:
        """A prepared chat whose stream never started (the client left first): nothing reached
        the client, so the hold is released in full and the key freed for a retry."""
        await self.release_quietly(turn, "aborted")
        await self._claims.unclaim(turn.request_id)
        log.info("chat_abandoned_before_stream", request_id=turn.request_id)

    async def release_quietly(self, turn: Turn, reason: str) -> None:
        """Stop the engine and release the hold of a chat refused in prepare; a ledger failure
        is logged, not raised, so the caller's own error (engine busy...) is what the client
        sees. An unreleased hold expires and the sweeper releases it."""
        turn.give_back_slot()
        await close_stream(turn.stream)
        try:
            await self._holds.release(turn.identity, turn.request_id, turn.hold_id, reason)
        except Exception as exc:
            log.error(
                "chat_release_failed",
                request_id=turn.request_id,
                error=str(exc),
                code=getattr(exc, "code", type(exc).__name__),
            )

    # -- shutdown --------------------------------------------------------------------------
    def end_all(self) -> None:
        """Stop every running generation; each is then settled (hold released, reason
        `cancelled`, unless its engine had already finished) and its stream ends with an
        error `shutting_down`."""
        self.closing = True
        for turn in list(self._active.values()):
            self._stop(turn, "cancelled")

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no generation runs or settles (a reader that is behind is not waited
        for: its turn is settled already)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def wait_settlements(self, timeout_s: float) -> None:
        pumps = [turn.settlement for turn in self._active.values() if turn.settlement]
        if pumps:
            await asyncio.wait(pumps, timeout=timeout_s)


class NoStream:
    """The stream of a generation not yet started: empty."""

    def __aiter__(self) -> NoStream:
        return self

    async def __anext__(self) -> TextDelta | Finished:
        raise StopAsyncIteration
