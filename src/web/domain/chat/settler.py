"""Settling one chat turn once its generation has ended: close the engine stream (for its exact
final counts), decide what to bill (`settlement.decide_settlement`), capture or release the
hold (`holds.py`), then record the interaction, the conversation's messages and the claim's
outcome, with metrics and one log line. `streams.py` calls it exactly once per turn."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from inference.events import Finished, TextDelta
from ledger.errors import HoldAlreadyResolved, HoldExpired
from web import metrics
from web.domain.accounts.schemas import Identity
from web.domain.chat.claims import ChatClaims
from web.domain.chat.conversations import ConversationsService
from web.domain.chat.holds import ChatHolds
from web.domain.chat.schemas import BalanceView, ChatCompleted, MessageUsage, SettlementKind
from web.domain.chat.settlement import Settlement, StreamEnd, decide_settlement
from web.domain.chat.turn import Turn
from web.logging import get_logger
from web.tables import ModelInteractionRow

log = get_logger(__name__)
BILLING_SAMPLES_KEPT = 10_000
SettledListener = Callable[[Identity, ChatCompleted], None]


class TurnSettler:
    """Resolves the holds of one chat service's turns and records their outcomes."""

    def __init__(
        self,
        claims: ChatClaims,
        holds: ChatHolds,
        conversations: ConversationsService,
        partial_capture_on_disconnect: bool,
    ) -> None:
        self._claims = claims
        self._holds = holds
        self._conversations = conversations
        self._partial_capture = partial_capture_on_disconnect
        self.billing_overhead_ms: collections.deque[float] = collections.deque(
            maxlen=BILLING_SAMPLES_KEPT
        )
        """Billing time of recent requests (for `ledgerchat bench service`)."""
        self.listeners: list[SettledListener] = []
        """Told of each settled turn, synchronously: each must only schedule its work (alerts
        start a background task), so that no listener delays or fails a chat."""

    async def settle(self, turn: Turn, end: StreamEnd) -> ChatCompleted:
        """Resolve the hold once, then record the interaction, the messages and the outcome."""
        await close_stream(turn.stream)
        if end.finished is None:
            # After aclose() the engine's stream holds the final event with exact counts.
            final = getattr(turn.stream, "finished", None)
            if isinstance(final, Finished):
                end = dataclasses.replace(end, finished=final)
        # The hold was placed at `turn.price` for the model that answers (prepare resolved any
        # fallback before the hold): the capture is billed at that same price version, even if
        # the catalog changed since.
        price = turn.price
        decision = decide_settlement(end, price, turn.hold_credits, self._partial_capture)
        settle_started = time.perf_counter()
        settlement, release_reason, balance = await self._resolve_hold(turn, decision)
        phases = turn.billing_phases_ms
        phases["resolve"] = _ms_since(settle_started)
        cost = decision.capture_credits if settlement != "released" else 0
        if settlement == "captured" and decision.finish_reason == "cancelled":
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
            max_tokens_shrunk_to=turn.max_tokens_shrunk_to,
        )
        await self._record(turn, turn.reply.text, done, int(elapsed_s * 1000))
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
            billing_ms=round(billing_s * 1000, 3),
            billing_phases_ms=phases,
        )
        for listener in self.listeners:
            try:
                listener(turn.identity, done)
            except Exception as exc:
                log.error("settled_listener_failed", request_id=turn.request_id, error=str(exc))
        return done

    async def _resolve_hold(
        self, turn: Turn, decision: Settlement
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
                        "price_version": turn.price.version,
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

    async def _record(self, turn: Turn, text: str, done: ChatCompleted, processing_ms: int) -> None:
        """The conversation's messages, the interaction and the claim's outcome, in one
        transaction (`ChatClaims.store_outcome`, which stores the outcome alone when the
        messages fail)."""
        chat_input = turn.chat_input
        phases = turn.billing_phases_ms
        exchange_started = time.perf_counter()
        phases["exchange"] = 0.0
        exchange: Callable[[AsyncSession], Awaitable[None]] | None = None
        message = chat_input.message
        conversation_id = turn.conversation_id
        if conversation_id is not None and message is not None:

            async def write_exchange(session: AsyncSession) -> None:
                try:
                    await self._conversations.add_exchange(
                        session,
                        turn.identity,
                        conversation_id,
                        message,
                        text,
                        done.model_answered,
                        usage=MessageUsage.of(done),
                    )
                finally:
                    phases["exchange"] = _ms_since(exchange_started)

            exchange = write_exchange

        interaction = ModelInteractionRow(
            user_id=turn.identity.user_id,
            api_key_id=turn.identity.api_key_id,
            chat_request_id=turn.request_id,
            conversation_id=conversation_id,
            model_id=done.model_answered,
            prompt=turn.prompt_text,
            response=text,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            credits_charged=done.cost_credits,
            processing_ms=processing_ms,
            finish_reason=done.finish_reason,
        )
        exchange_error = await self._claims.store_outcome(
            turn.request_id, interaction, done, text, exchange
        )
        # "exchange" is the messages' part of the shared transaction, "outcome" the rest.
        phases["outcome"] = round(_ms_since(exchange_started) - phases["exchange"], 3)
        if exchange_error is not None:
            log.warning(
                "chat_exchange_not_stored",
                request_id=turn.request_id,
                conversation_id=conversation_id,
                error=str(exchange_error),
            )


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _count(decision: Settlement, cost: int, settlement: SettlementKind, elapsed_s: float) -> None:
    answered = decision.model_answered
    metrics.TOKENS_GENERATED.labels(answered).inc(decision.completion_tokens)
    metrics.PROMPT_TOKENS.labels(answered).inc(decision.prompt_tokens)
    metrics.CREDITS_CHARGED.labels(answered).inc(cost)
    if decision.completion_tokens and elapsed_s > 0:
        metrics.TOKENS_PER_SECOND.labels(answered).observe(decision.completion_tokens / elapsed_s)
    metrics.CHAT_REQUESTS.labels(settlement).inc()


async def close_stream(stream: AsyncIterator[TextDelta | Finished]) -> None:
    """Stop generation: closing the engine's stream ends the request within one step."""
    closer = getattr(stream, "aclose", None)
    if closer is None:
        return
    with contextlib.suppress(RuntimeError, StopAsyncIteration):
        await closer()


def _count_source(decision: Settlement) -> dict[str, str]:
    """Ledger metadata saying who counted the tokens, when it was not the local engine."""
    if decision.token_count_source == "engine":
        return {}
    return {"token_count": decision.token_count_source}
