"""Running chat turns: stream the engine's events to the consumer, then settle each turn's
hold exactly once however the stream ended (the decision is `settlement.decide_settlement`;
this module does the I/O around it: close the engine stream, capture or release, metrics,
records). Settlements run as tasks shielded from cancellation, so a cancelled response task
still settles. Also owns shutdown: refuse new chats, end running streams after the grace."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from inference.events import Finished, TextDelta
from inference.router import InferenceBackend
from ledger.errors import HoldAlreadyResolved, HoldExpired
from web import metrics
from web.domain.billing.prices import ModelPrice
from web.domain.chat.claims import ChatClaims
from web.domain.chat.conversations import ConversationsService
from web.domain.chat.holds import ChatHolds
from web.domain.chat.inputs import NUL
from web.domain.chat.schemas import (
    BalanceView,
    ChatCompleted,
    ChatDelta,
    ChatEvent,
    ChatStarted,
    SettlementKind,
)
from web.domain.chat.settlement import (
    Settlement,
    StopReason,
    StreamEnd,
    answering_model,
    decide_settlement,
)
from web.domain.chat.turn import Turn
from web.errors import ShuttingDown
from web.logging import get_logger
from web.tables import ModelInteractionRow

log = get_logger(__name__)
BILLING_SAMPLES_KEPT = 10_000


class ChatStreams:
    """The running turns of one chat service."""

    def __init__(
        self,
        engine: InferenceBackend,
        claims: ChatClaims,
        holds: ChatHolds,
        conversations: ConversationsService,
        price_of: Callable[[str], ModelPrice],
        partial_capture_on_disconnect: bool,
    ) -> None:
        self._engine = engine
        self._claims = claims
        self._holds = holds
        self._conversations = conversations
        self._price_of = price_of
        self._partial_capture = partial_capture_on_disconnect
        self.closing = False
        self._ended_by_shutdown: set[str] = set()
        self._active: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._settlements: set[asyncio.Task[Any]] = set()
        self.billing_overhead_ms: collections.deque[float] = collections.deque(
            maxlen=BILLING_SAMPLES_KEPT
        )
        """Billing time of recent requests (for `ledgerchat bench service`)."""

    @property
    def active_count(self) -> int:
        return len(self._active)

    async def run(self, turn: Turn) -> AsyncGenerator[ChatEvent, None]:
        """ChatStarted, ChatDelta..., ChatCompleted; the turn is settled however this ends."""
        self._active.add(turn.request_id)
        self._idle.clear()
        metrics.ACTIVE_STREAMS.inc()
        parts: list[str] = []
        streamed_deltas = 0
        try:
            yield ChatStarted(
                request_id=turn.request_id,
                conversation_id=turn.conversation_id,
                model=turn.model.id,
                hold_credits=turn.hold_credits,
            )
            event: TextDelta | Finished | None = turn.first_event
            while event is not None and not isinstance(event, Finished):
                # A model can emit NUL (tiny or confused models do); it renders as nothing and
                # PostgreSQL text cannot store it, so it never leaves the engine boundary.
                text = event.text.replace(NUL, "")
                if event.text:
                    streamed_deltas += 1  # counts generated deltas, for billing a disconnect
                if text:
                    parts.append(text)
                    yield ChatDelta(text=text)
                event = await anext(turn.stream, None)
            if event is None:
                raise RuntimeError("the engine ended a stream without Finished")
            settlement = self._settle_task(
                turn,
                "".join(parts),
                StreamEnd(
                    model_id=turn.model.id,
                    estimated_prompt_tokens=turn.estimated_prompt_tokens,
                    finished=event,
                    closing=self.closing,
                ),
            )
            done = await asyncio.shield(settlement)
            if turn.request_id in self._ended_by_shutdown and done.cost_credits == 0:
                # Ended by `end_streams`: released in full (reason `cancelled`); the client is
                # told why with an `error` event rather than a `done`.
                raise ShuttingDown("the service is shutting down; the answer was cut, not charged")
            yield done
        finally:
            await self._finish(turn, "".join(parts), streamed_deltas)

    async def _finish(self, turn: Turn, text: str, streamed_deltas: int) -> None:
        """However the stream ended: settle it if the consumer left first, and wait for the
        settlement (shielded: a second cancellation leaves it running to completion)."""
        if turn.settlement is None:
            # The consumer stopped (disconnect/Stop) or the task was cancelled.
            stopped: StopReason = "cancelled" if self.closing else "aborted"
            self._settle_task(
                turn,
                text,
                StreamEnd(
                    model_id=turn.model.id,
                    estimated_prompt_tokens=turn.estimated_prompt_tokens,
                    finished=None,
                    stopped=stopped,
                    streamed_deltas=streamed_deltas,
                    closing=self.closing,
                ),
            )
        assert turn.settlement is not None
        if not turn.settlement.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(turn.settlement)
        self._active.discard(turn.request_id)
        self._ended_by_shutdown.discard(turn.request_id)
        if not self._active:
            self._idle.set()
        metrics.ACTIVE_STREAMS.dec()

    def _settle_task(self, turn: Turn, text: str, end: StreamEnd) -> asyncio.Task[ChatCompleted]:
        task = asyncio.get_running_loop().create_task(self._settle(turn, text, end))
        turn.settlement = task
        self._settlements.add(task)
        task.add_done_callback(self._settlements.discard)
        return task

    async def _settle(self, turn: Turn, text: str, end: StreamEnd) -> ChatCompleted:
        """Resolve the hold once, then record the interaction, the messages and the outcome."""
        await close_stream(turn.stream)
        if end.finished is None:
            # After aclose() the engine's stream holds the final event with exact counts.
            final = getattr(turn.stream, "finished", None)
            if isinstance(final, Finished):
                end = dataclasses.replace(end, finished=final)
        answered = answering_model(end)
        price = turn.price if answered == turn.model.id else self._price_of(answered)
        decision = decide_settlement(end, price, turn.hold_credits, self._partial_capture)
        settle_started = time.perf_counter()
        settlement, release_reason, balance = await self._resolve_hold(turn, decision, price)
        cost = decision.capture_credits if settlement != "released" else 0
        if settlement == "captured" and end.stopped is not None:
            settlement = "partially_captured"
        elapsed_s = time.monotonic() - turn.started_at
        _count(decision, cost, settlement, elapsed_s)
        done = ChatCompleted(
            request_id=turn.request_id,
            conversation_id=turn.conversation_id,
            model_requested=turn.requested_model_id,
            model_answered=decision.model_answered,
            prompt_tokens=decision.prompt_tokens,
            completion_tokens=decision.completion_tokens,
            cost_credits=cost,
            hold_credits=turn.hold_credits,
            price_version=price.version,
            finish_reason=decision.finish_reason,
            settlement=settlement,
            balance=balance,
            error=decision.error,
            release_reason=release_reason if cost == 0 else None,
        )
        await self._record(turn, text, done, int(elapsed_s * 1000))
        billing_s = turn.billing_s + time.perf_counter() - settle_started
        metrics.BILLING_OVERHEAD_S.observe(billing_s)
        self.billing_overhead_ms.append(billing_s * 1000)
        log.info(
            "chat_settled",
            request_id=turn.request_id,
            user_id=turn.identity.user_id,
            model=decision.model_answered,
            cost_credits=cost,
            settlement=settlement,
            finish_reason=decision.finish_reason,
            completion_tokens=decision.completion_tokens,
        )
        return done

    async def _resolve_hold(
        self, turn: Turn, decision: Settlement, price: ModelPrice
    ) -> tuple[SettlementKind, str | None, BalanceView]:
        """Capture or release as decided; the receipt gives the new balance."""
        try:
            if decision.capture_credits > 0:
                balance = await self._holds.capture(
                    turn.identity,
                    turn.request_id,
                    turn.hold_id,
                    decision.capture_credits,
                    {
                        "model": decision.model_answered,
                        "prompt_tokens": decision.prompt_tokens,
                        "completion_tokens": decision.completion_tokens,
                        "price_version": price.version,
                        **_count_source(decision),
                    },
                )
                return "captured", decision.release_reason, balance
            reason = decision.release_reason or "aborted"
            balance = await self._holds.release(
                turn.identity, turn.request_id, turn.hold_id, reason
            )
            return "released", decision.release_reason, balance
        except (HoldExpired, HoldAlreadyResolved) as exc:
            # Only when the hold outlived its TTL (a stalled process): the sweeper released it
            # in full, so nothing is charged.
            log.error("hold_resolved_elsewhere", request_id=turn.request_id, code=exc.code)
            return "released", "expired", await self._holds.balance(turn.identity)

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

    async def _record(self, turn: Turn, text: str, done: ChatCompleted, processing_ms: int) -> None:
        chat_input = turn.chat_input
        if turn.conversation_id is not None and chat_input.message is not None:
            try:
                await self._conversations.append_exchange(
                    turn.identity,
                    turn.conversation_id,
                    chat_input.message,
                    text,
                    done.model_answered,
                )
            except Exception as exc:
                # Credit has moved: the outcome below must be stored whatever happened to the
                # conversation (deleted mid-stream: NotFound), or a retry would charge again.
                log.warning(
                    "chat_exchange_not_stored",
                    request_id=turn.request_id,
                    conversation_id=turn.conversation_id,
                    error=str(exc),
                )
        interaction = ModelInteractionRow(
            user_id=turn.identity.user_id,
            chat_request_id=turn.request_id,
            conversation_id=turn.conversation_id,
            model_id=done.model_answered,
            prompt=turn.prompt_text,
            response=text,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            credits_charged=done.cost_credits,
            processing_ms=processing_ms,
            finish_reason=done.finish_reason,
        )
        await self._claims.store_outcome(turn.request_id, interaction, done, text)

    # -- shutdown --------------------------------------------------------------------------
    def end_all(self) -> None:
        """Stop every running generation; each stream then settles (hold released, reason
        `cancelled`) and ends with an error `shutting_down`."""
        self.closing = True
        for request_id in list(self._active):
            self._ended_by_shutdown.add(request_id)
            self._engine.cancel(request_id)

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def wait_settlements(self, timeout_s: float) -> None:
        if self._settlements:
            await asyncio.wait(list(self._settlements), timeout=timeout_s)


def _count(decision: Settlement, cost: int, settlement: SettlementKind, elapsed_s: float) -> None:
    answered = decision.model_answered
    metrics.TOKENS_GENERATED.labels(answered).inc(decision.completion_tokens)
    metrics.PROMPT_TOKENS.labels(answered).inc(decision.prompt_tokens)
    metrics.CREDITS_CHARGED.labels(answered).inc(cost)
    if decision.completion_tokens and elapsed_s > 0:
        metrics.TOKENS_PER_SECOND.labels(answered).observe(decision.completion_tokens / elapsed_s)
    metrics.CHAT_REQUESTS.labels(settlement).inc()


def _count_source(decision: Settlement) -> dict[str, str]:
    """Ledger metadata saying who counted the tokens, when it was not the local engine."""
    if decision.token_count_source == "engine":
        return {}
    return {"token_count": decision.token_count_source}


class NoStream:
    """The stream of a generation not yet started: empty."""

    def __aiter__(self) -> NoStream:
        return self

    async def __anext__(self) -> TextDelta | Finished:
        raise StopAsyncIteration


async def close_stream(stream: AsyncIterator[TextDelta | Finished]) -> None:
    """Stop generation: closing the engine's stream ends the request within one step."""
    closer = getattr(stream, "aclose", None)
    if closer is None:
        return
    with contextlib.suppress(RuntimeError, StopAsyncIteration):
        await closer()
