"""The chat service: the one entry of /api/chat, /v1/chat/completions and the Gradio UI.

`ChatService.prepare` validates, claims the Idempotency-Key (`claims.py`), tokenizes the prompt
once and prices its worst case, places the ledger hold (`holds.py`) and starts generation;
anything refused there (402, 404, 409, 503) is raised before a single byte is streamed. The
`PreparedChat` it returns (`turn.py`) streams ChatStarted, ChatDelta..., ChatCompleted, and
however the stream ends its hold is resolved exactly once (`streams.py`, deciding with
`settlement.py`)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inference.errors import InferenceError, ModelUnavailable, UpstreamError
from inference.events import Finished, TextDelta
from inference.requests import ChatMessage, GenerationRequest, PreparedRequest
from inference.router import InferenceBackend
from ledger import Ledger
from web import metrics
from web.chat_slots import ChatSlot, ChatSlots
from web.domain.accounts.schemas import Identity
from web.domain.billing.prices import ModelPrice, PriceCatalog, PricedModel
from web.domain.budgets.services import BudgetsService, ChatBudgets
from web.domain.chat.affordable import largest_affordable_completion
from web.domain.chat.claims import SLOW_PREPARE_FRACTION, ChatClaims
from web.domain.chat.conversations import ConversationsService
from web.domain.chat.holds import ChatHolds
from web.domain.chat.inputs import (
    ChatInput,
    generation_deadline_s,
    sampling_params,
    validate_chat_input,
)
from web.domain.chat.pricing import cost_credits
from web.domain.chat.settler import SettledListener
from web.domain.chat.streams import ChatStreams, NoStream
from web.domain.chat.turn import PreparedChat, Turn
from web.errors import ModelLoading, NotFound, RateLimited, ShuttingDown
from web.rate_limit import RateLimiter
from web.settings import BillingSettings, ChatSettings

__all__ = ["ChatInput", "ChatService", "PreparedChat"]

# What a chat refused while its model loads is told to wait: loading the bundled 270M from its
# cached copy takes seconds (a GGUF load without one, under a minute).
MODEL_LOADING_RETRY_AFTER_S = 5


class ChatService:
    """Billed chat over one engine, ledger and database."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ledger: Ledger,
        engine: InferenceBackend,
        conversations: ConversationsService,
        chat: ChatSettings,
        billing: BillingSettings,
        prices: PriceCatalog,
        rate_limiter: RateLimiter | None = None,
        slots: ChatSlots | None = None,
    ) -> None:
        self._rate_limiter = rate_limiter
        self._slots = slots
        self._sessions = sessions
        self._engine = engine
        self._conversations = conversations
        self._chat = chat
        self._billing = billing
        self._prices = prices
        self._holds = ChatHolds(ledger, billing.hold_ttl_s)
        self._budgets = BudgetsService(sessions, ledger)
        self._claims = ChatClaims(
            sessions, ledger, self._holds, billing.hold_ttl_s, chat.default_model
        )
        self._streams = ChatStreams(
            engine,
            self._claims,
            self._holds,
            conversations,
            billing.partial_capture_on_disconnect,
        )

    def add_settled_listener(self, listener: SettledListener) -> None:
        """Call `listener(identity, done)` after each chat turn settles."""
        self._streams.add_settled_listener(listener)

    @property
    def active_streams(self) -> int:
        return self._streams.active_count

    @property
    def billing_overhead_ms(self) -> collections.deque[float]:
        """Billing time of recent requests (for `ledgerchat bench service`)."""
        return self._streams.billing_overhead_ms

    def models(self) -> list[PricedModel]:
        """Every catalog model as it stands now, with its price."""
        return [PricedModel.of(m, self._prices.get(m.id)) for m in self._engine.models()]

    def find_model(self, model_id: str | None) -> PricedModel:
        wanted = model_id or self._chat.default_model
        for model in self._engine.models():
            if model.id == wanted:
                return PricedModel.of(model, self._prices.get(model.id))
        raise NotFound(f"model {wanted!r} is not in the catalog")

    # -- prepare: every refusal happens here ---------------------------------------------
    async def prepare(self, identity: Identity, chat_input: ChatInput) -> PreparedChat:
        """Check, claim, hold and start a chat; raises every refusal before streaming. The
        per-user chat rate limit and concurrency limit are applied here, so /api/chat, /v1 and
        the UI share them; the slot is given back when the turn settles (or is refused)."""
        await self._check_rate(identity)
        if self._streams.closing:
            raise ShuttingDown("the service is shutting down; retry shortly")
        validate_chat_input(chat_input, self._chat, self._billing)
        model = self.find_model(chat_input.model_id)
        self._refuse_while_loading(model.id)
        slot = None if self._slots is None else await self._slots.acquire(str(identity.user_id))
        try:
            prepared = await self._prepare(identity, chat_input, model, slot)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        return prepared

    async def _prepare(
        self,
        identity: Identity,
        chat_input: ChatInput,
        model: PricedModel,
        slot: ChatSlot | None,
    ) -> PreparedChat:
        key = chat_input.idempotency_key or f"auto-{uuid.uuid4()}"
        claim_started = time.perf_counter()
        budgets_s = 0.0

        async def read_budgets(session: AsyncSession) -> ChatBudgets:
            nonlocal budgets_s
            started = time.perf_counter()
            try:
                return await self._budgets.for_chat_in(session, identity)
            finally:
                budgets_s = time.perf_counter() - started

        # The budgets are read in the claim's transaction: one session and commit, not two.
        claimed = await self._claims.claim(identity, chat_input, key, read_budgets)
        if isinstance(claimed, list):
            if slot is not None:
                slot.release()
            return PreparedChat(self._streams, None, replay=claimed)
        request_id, budgets = claimed
        claim_s = time.perf_counter() - claim_started
        try:
            turn = await self._start(
                identity, chat_input, model, request_id, budgets, claim_started
            )
        except BaseException:
            await self._claims.unclaim(request_id)
            raise
        turn.slot = slot
        turn.billing_s += claim_s
        # The budgets read, inside the claim's transaction, is logged as a phase of its own.
        turn.billing_phases_ms["claim"] = round((claim_s - budgets_s) * 1000, 3)
        turn.billing_phases_ms["budgets"] = round(budgets_s * 1000, 3)
        return PreparedChat(self._streams, turn)

    async def _check_rate(self, identity: Identity) -> None:
        if self._rate_limiter is None:
            return
        retry_after_s = await self._rate_limiter.hit(f"chat:{identity.user_id}")
        if retry_after_s:
            raise RateLimited("too many chat requests for this user", retry_after_s=retry_after_s)

    def _refuse_while_loading(self, model_id: str) -> None:
        """The port opens before the default model has loaded (and a load may be in flight
        for another model): a chat then is refused at once, nothing claimed or held, rather
        than left hanging until the load ends."""
        loading_for_s = self._engine.loading_for_s(model_id)
        if loading_for_s is None:
            return
        state = self._engine.loading_state(model_id)
        done = "" if state is None else f"{state.percent}% done, "
        raise ModelLoading(
            f"The model {model_id} is still loading ({done}started {loading_for_s:.0f} s ago). "
            f"Nothing was charged; try again in {MODEL_LOADING_RETRY_AFTER_S} seconds.",
            model_id=model_id,
            retry_after_s=MODEL_LOADING_RETRY_AFTER_S,
        )

    async def _context(
        self, identity: Identity, chat_input: ChatInput
    ) -> tuple[str | None, tuple[ChatMessage, ...]]:
        if chat_input.messages is not None:
            return None, chat_input.messages
        assert chat_input.message is not None
        history: list[ChatMessage] = []
        conversation_id = chat_input.conversation_id
        if conversation_id is not None:
            stored = await self._conversations.recent_messages(
                identity, conversation_id, self._chat.max_history_messages
            )
            history = [
                ChatMessage(
                    role="assistant" if m.role == "assistant" else "user", content=m.content
                )
                for m in stored
            ]
        return conversation_id, (*history, ChatMessage(role="user", content=chat_input.message))

    async def _start(
        self,
        identity: Identity,
        chat_input: ChatInput,
        model: PricedModel,
        request_id: str,
        budgets: ChatBudgets,
        claimed_at: float,
    ) -> Turn:
        conversation_id, messages = await self._context(identity, chat_input)
        request = GenerationRequest(
            model_id=model.id,
            messages=messages,
            sampling=sampling_params(chat_input.sampling, model, self._chat),
            request_id=request_id,
            # The generation must end (timeout) before its hold can expire, so a capture never
            # races the sweeper.
            deadline_s=min(
                self._engine.settings.default_deadline_s,
                generation_deadline_s(self._billing.hold_ttl_s),
            ),
        )
        # Tokenized once here; the same prepared request is streamed below.
        prepared = await self._engine.prepare(request)
        requested_model_id = model.id
        if prepared.model_id != model.id:
            # The engine falls back to another model when this one cannot load; price the
            # hold at the model that will answer (nothing is held yet when /v1 refuses).
            if not chat_input.serve_fallback and not model.fallback_on_v1:
                raise ModelUnavailable(model.id, "not installed on this server")
            model = self.find_model(prepared.model_id)
        price = model.price
        hold_started = time.perf_counter()
        shrunk_to = None
        if chat_input.shrink_to_affordable:
            prepared, shrunk_to = await self._fit_to_affordable(identity, budgets, price, prepared)
        hold_credits = cost_credits(price, prepared.prompt_tokens, prepared.max_completion_tokens)
        hold_id = await self._holds.place(
            identity, request_id, hold_credits, model.id, price, budgets
        )
        stream: AsyncIterator[TextDelta | Finished] = NoStream()
        turn = Turn(
            identity=identity,
            chat_input=chat_input,
            request_id=request_id,
            conversation_id=conversation_id,
            model=model,
            price=price,
            requested_model_id=requested_model_id,
            hold_id=hold_id,
            hold_credits=hold_credits,
            estimated_prompt_tokens=prepared.prompt_tokens,
            prompt_text=messages[-1].content,
            stream=stream,
            first_event=TextDelta(text=""),
            started_at=time.monotonic(),
            billing_s=time.perf_counter() - hold_started,
            max_tokens_shrunk_to=shrunk_to,
        )
        turn.billing_phases_ms["hold"] = round(turn.billing_s * 1000, 3)
        try:
            if time.perf_counter() - claimed_at > self._billing.hold_ttl_s * SLOW_PREPARE_FRACTION:
                await self._claims.mark_hold_placed(request_id)
            turn.stream = stream = aiter(self._engine.stream(prepared))
            # Waiting for the first event lets an engine refusal (busy, unavailable) become an
            # HTTP error instead of a broken stream; the hold is released in full.
            turn.first_event = await anext(stream)
            if conversation_id is None and chat_input.message is not None:
                created = await self._conversations.create(identity, chat_input.message)
                turn.conversation_id = created.id
        except InferenceError as exc:
            metrics.CHAT_REQUESTS.labels(exc.code).inc()
            # A remote engine's failure names itself (engine_unavailable, engine_timeout, ...).
            reason = exc.code if isinstance(exc, UpstreamError) else "failed"
            await self._streams.release_quietly(turn, reason)
            raise
        except BaseException:
            # Shielded: a cancelled request still frees its hold and stops its generation.
            await asyncio.shield(self._streams.release_quietly(turn, "cancelled"))
            raise
        return turn

    async def _fit_to_affordable(
        self, identity: Identity, budgets: ChatBudgets, price: ModelPrice, prepared: PreparedRequest
    ) -> tuple[PreparedRequest, int | None]:
        """`prepared` with max_completion_tokens lowered to what the available balance and
        every budget can pay for, and that count; unchanged (None) when the worst case is
        affordable, or when not even one token is (the hold then answers 402 as it would)."""
        worst = cost_credits(price, prepared.prompt_tokens, prepared.max_completion_tokens)
        affordable = (await self._holds.balance(identity)).available
        budget_left = await self._budgets.left_credits(identity, budgets)
        if budget_left is not None:
            affordable = min(affordable, budget_left)
        if worst <= affordable:
            return prepared, None
        fits = largest_affordable_completion(
            price, prepared.prompt_tokens, prepared.max_completion_tokens, affordable
        )
        if fits < 1:
            return prepared, None
        return dataclasses.replace(prepared, max_completion_tokens=fits), fits

    # -- shutdown --------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Refuse new chats from now on; running ones continue."""
        self._streams.closing = True

    def end_streams(self) -> None:
        """Shutdown after the grace period: stop every running generation; each stream then
        settles (hold released, reason `cancelled`) and ends with an error `shutting_down`."""
        self._streams.end_all()

    async def wait_idle(self, timeout_s: float) -> bool:
        return await self._streams.wait_idle(timeout_s)

    async def wait_settlements(self, timeout_s: float) -> None:
        await self._streams.wait_settlements(timeout_s)
