"""The billing rules of a chat answer, in one place, used by /api/chat, /v1/chat/completions
and the Gradio UI alike.

`ChatService.prepare` validates, claims the Idempotency-Key, prices the worst case, places the
ledger hold and starts generation; anything refused there (402, 404, 409, 503) is raised before
a single byte is streamed. `PreparedChat.events()` then yields ChatStarted, ChatDelta...,
ChatCompleted. However the stream ends, the hold is resolved exactly once:

- finished normally: capture the actual cost (the rest is released in the same ledger event);
- the consumer stopped iterating (disconnect, Stop): capture what was streamed, or release all,
  per `BillingSettings.partial_capture_on_disconnect`;
- engine error or timeout, or service shutdown: release in full with that reason.

The settlement runs shielded from cancellation, so a cancelled response task still settles.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inference import Engine
from inference.catalog import ModelPrice
from inference.errors import InferenceError
from inference.events import Finished, ModelStatus, TextDelta
from inference.requests import ChatMessage, GenerationRequest, SamplingParams
from ledger import Ledger
from ledger.errors import HoldAlreadyResolved, HoldExpired, InsufficientCredits, LedgerBusy
from ledger.models import HistoryEntry
from web import metrics
from web.domain.accounts.schemas import Identity
from web.domain.chat.conversations import ConversationsService
from web.domain.chat.pricing import cost_credits, price_as_dict
from web.domain.chat.schemas import (
    BalanceView,
    ChatCompleted,
    ChatDelta,
    ChatEvent,
    ChatStarted,
    SamplingOptions,
    SettlementKind,
)
from web.errors import (
    CreditsExhausted,
    IdempotencyKeyReused,
    NotFound,
    RequestInProgress,
    ShuttingDown,
    ValidationFailed,
)
from web.ledger_calls import counted
from web.logging import get_logger
from web.settings import BillingSettings, ChatSettings
from web.tables import ChatRequestRow, ModelInteractionRow, utc_now

log = get_logger(__name__)

BILLING_SAMPLES_KEPT = 10_000
HOLD_MARGIN_FRACTION = 0.25
HOLD_MARGIN_MAX_S = 60.0
SLOW_PREPARE_FRACTION = 0.25
"""A prepare that took longer than this share of the hold TTL before its hold was placed marks
its claim (updated_at), so a retry cannot take the claim for abandoned while the hold runs."""
CLOCK_SLACK_S = 5.0
"""Tolerance between the web and ledger clocks when searching the ledger for a claim's hold."""
LEDGER_BUSY_ATTEMPTS = 3
LEDGER_BUSY_BACKOFF_S = 0.2
TRACE_PAGES_MAX = 50


NUL = "\x00"


def generation_deadline_s(hold_ttl_s: float) -> float:
    """A generation deadline that ends well before the hold expires."""
    return hold_ttl_s - min(HOLD_MARGIN_MAX_S, hold_ttl_s * HOLD_MARGIN_FRACTION)


STATUS_STARTED = "started"
STATUS_DONE = "done"


@dataclasses.dataclass(frozen=True)
class ChatInput:
    """One chat request from any front end. Either `message` (appended to the stored
    conversation, or a new one) or `messages` (the whole context, not stored: /v1)."""

    model_id: str | None = None
    message: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    conversation_id: str | None = None
    sampling: SamplingOptions = dataclasses.field(default_factory=SamplingOptions)
    idempotency_key: str | None = None

    def fingerprint(self) -> str:
        payload = {
            "model": self.model_id,
            "message": self.message,
            "messages": [[m.role, m.content] for m in self.messages or ()],
            "conversation_id": self.conversation_id,
            "sampling": msgspec.to_builtins(self.sampling),
        }
        return hashlib.sha256(msgspec.json.encode(payload)).hexdigest()


@dataclasses.dataclass
class _Generation:
    """Everything about one started, not yet settled generation."""

    identity: Identity
    chat_input: ChatInput
    request_id: str
    idempotency_key: str
    conversation_id: str | None
    model: ModelStatus
    """The model that answers: the requested one, or its fallback when that cannot load."""
    requested_model_id: str
    hold_id: str
    hold_credits: int
    estimated_prompt_tokens: int
    prompt_text: str
    stream: AsyncIterator[TextDelta | Finished]
    first_event: TextDelta | Finished
    started_at: float
    billing_s: float = 0.0
    """Time spent on billing (claim, hold, capture or release, balance, records)."""


_FINISH_OF_RELEASE = {"failed": "error", "timeout": "timeout"}


@dataclasses.dataclass(frozen=True)
class _LedgerTrace:
    hold: HistoryEntry | None
    resolution: HistoryEntry | None
    """The capture or release of `hold`, if any."""


def _replay_events(stored: dict[str, Any]) -> list[ChatEvent]:
    done = msgspec.convert(stored["done"], ChatCompleted)
    done = msgspec.structs.replace(done, replayed=True)
    events: list[ChatEvent] = [
        ChatStarted(
            request_id=done.request_id,
            conversation_id=done.conversation_id,
            model=done.model_requested,
            hold_credits=done.hold_credits,
            replayed=True,
        )
    ]
    if stored.get("text"):
        events.append(ChatDelta(text=str(stored["text"])))
    events.append(done)
    return events


class PreparedChat:
    """A chat that passed every check; iterate `events()` exactly once."""

    def __init__(
        self,
        service: ChatService,
        generation: _Generation | None,
        replay: list[ChatEvent] | None = None,
    ) -> None:
        self._service = service
        self._generation = generation
        self._replay = replay
        self._consumed = False

    @property
    def request_id(self) -> str:
        if self._generation is not None:
            return self._generation.request_id
        assert self._replay is not None
        first = self._replay[0]
        assert isinstance(first, ChatStarted)
        return first.request_id

    async def events(self) -> AsyncGenerator[ChatEvent, None]:
        assert not self._consumed, "a prepared chat streams once"
        self._consumed = True
        if self._replay is not None:
            for event in self._replay:
                yield event
            return
        generation = self._generation
        assert generation is not None
        # aclosing: when the consumer stops early (Stop, disconnect), closing this generator
        # closes _run at once, so the partial capture settles now rather than at garbage
        # collection.
        async with contextlib.aclosing(self._service._run(generation)) as events:
            async for event in events:
                yield event

    async def cancel(self) -> None:
        """Release the hold of a prepared chat that will never be streamed."""
        if self._generation is not None and not self._consumed:
            self._consumed = True
            await self._service._abandon(self._generation)


class ChatService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ledger: Ledger,
        engine: Engine,
        conversations: ConversationsService,
        chat: ChatSettings,
        billing: BillingSettings,
    ) -> None:
        self._sessions = sessions
        self._ledger = ledger
        self._engine = engine
        self._conversations = conversations
        self._chat = chat
        self._billing = billing
        self._closing = False
        self._ended_by_shutdown: set[str] = set()
        self._active: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.billing_overhead_ms: collections.deque[float] = collections.deque(
            maxlen=BILLING_SAMPLES_KEPT
        )
        """Billing time of recent requests (for `ledgerchat bench service`)."""
        # Settlements run as tasks so cancellation of the response cannot interrupt them.
        self._settlements: set[asyncio.Task[Any]] = set()

    @property
    def active_streams(self) -> int:
        return len(self._active)

    # -- the whole flow for callers that need no HTTP status before streaming ------------
    async def stream(self, identity: Identity, chat_input: ChatInput) -> AsyncIterator[ChatEvent]:
        prepared = await self.prepare(identity, chat_input)
        events = prepared.events()
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    def models(self) -> list[ModelStatus]:
        return list(self._engine.models())

    def find_model(self, model_id: str | None) -> ModelStatus:
        wanted = model_id or self._chat.default_model
        for model in self._engine.models():
            if model.id == wanted:
                return model
        raise NotFound(f"model {wanted!r} is not in the catalog")

    async def balance(self, identity: Identity) -> BalanceView:
        async with counted("balance"):
            balance = await self._ledger.balance(identity.account_id)
        return BalanceView(posted=balance.posted, held=balance.held, available=balance.available)

    # -- prepare: every refusal happens here ---------------------------------------------
    async def prepare(self, identity: Identity, chat_input: ChatInput) -> PreparedChat:
        if self._closing:
            raise ShuttingDown("the service is shutting down; retry shortly")
        self._validate(chat_input)
        model = self.find_model(chat_input.model_id)
        key = chat_input.idempotency_key or f"auto-{uuid.uuid4()}"
        claim_started = time.perf_counter()
        claimed = await self._claim(identity, chat_input, key, chat_input.fingerprint())
        if isinstance(claimed, list):
            return PreparedChat(self, None, replay=claimed)
        request_id = claimed
        claim_s = time.perf_counter() - claim_started
        try:
            generation = await self._start(
                identity, chat_input, model, request_id, key, claim_started
            )
        except BaseException:
            await self._unclaim(request_id)
            raise
        generation.billing_s += claim_s
        return PreparedChat(self, generation)

    def _validate(self, chat_input: ChatInput) -> None:
        if (chat_input.message is None) == (chat_input.messages is None):
            raise ValidationFailed("give either a message or a list of messages")
        texts = [chat_input.message] if chat_input.message is not None else []
        texts += [m.content for m in chat_input.messages or ()]
        if any(NUL in text for text in texts):
            # PostgreSQL text cannot hold NUL, and no chat needs it: refuse it up front rather
            # than fail while storing the exchange.
            raise ValidationFailed("messages must not contain NUL characters", field="message")
        others: dict[str, Sequence[str | None]] = {
            "conversation_id": [chat_input.conversation_id],
            "model": [chat_input.model_id],
            "idempotency_key": [chat_input.idempotency_key],
            "stop": list(chat_input.sampling.stop),
        }
        for field, values in others.items():
            # conversation_id and the key reach PostgreSQL queries, where NUL is an error (500).
            if any(value is not None and NUL in value for value in values):
                raise ValidationFailed(f"{field} must not contain NUL characters", field=field)
        if chat_input.message is not None:
            if not chat_input.message.strip():
                raise ValidationFailed("message must not be blank", field="message")
            if len(chat_input.message) > self._chat.max_message_chars:
                raise ValidationFailed(
                    f"message is longer than {self._chat.max_message_chars} characters",
                    field="message",
                )
        if chat_input.messages is not None:
            # The answer is to the last message: a blank one is refused as /api/chat refuses a
            # blank message (content null, whitespace, or parts without text all count).
            if not chat_input.messages or not chat_input.messages[-1].content.strip():
                raise ValidationFailed("the last message must not be blank", field="messages")
            total = sum(len(m.content) for m in chat_input.messages)
            if total > self._chat.max_message_chars * 4:
                raise ValidationFailed("messages are too long in total", field="messages")
        max_tokens = chat_input.sampling.max_tokens
        if max_tokens is not None and max_tokens > self._chat.max_max_tokens:
            raise ValidationFailed(
                f"max_tokens may be at most {self._chat.max_max_tokens}", field="max_tokens"
            )
        key = chat_input.idempotency_key
        if key is not None and not 1 <= len(key) <= self._billing.max_idempotency_key_length:
            raise ValidationFailed(
                f"Idempotency-Key must be 1-{self._billing.max_idempotency_key_length} characters"
            )

    async def _claim(
        self,
        identity: Identity,
        chat_input: ChatInput,
        key: str,
        fingerprint: str,
        *,
        attempts: int = 2,
    ) -> str | list[ChatEvent]:
        """Insert the request row; an existing row means a retry: replay, conflict or busy."""
        request_id = str(uuid.uuid4())
        async with self._sessions() as session:
            session.add(
                ChatRequestRow(
                    id=request_id,
                    user_id=identity.user_id,
                    idempotency_key=key,
                    fingerprint=fingerprint,
                    status=STATUS_STARTED,
                )
            )
            try:
                await session.commit()
                return request_id
            except IntegrityError:
                await session.rollback()
            existing = await session.scalar(
                select(ChatRequestRow).where(
                    ChatRequestRow.user_id == identity.user_id,
                    ChatRequestRow.idempotency_key == key,
                )
            )
        if existing is None:
            # Deleted between our insert and read: an earlier attempt was refused (402...).
            if attempts <= 1:
                raise RequestInProgress("a request with this Idempotency-Key is being retried")
            return await self._claim(identity, chat_input, key, fingerprint, attempts=attempts - 1)
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was used for a different request")
        if existing.status != STATUS_DONE or existing.outcome_json is None:
            if attempts > 1:
                resolved = await self._resolve_stale_claim(identity, chat_input, existing)
                if isinstance(resolved, list):
                    return resolved
                if resolved:
                    return await self._claim(
                        identity, chat_input, key, fingerprint, attempts=attempts - 1
                    )
            raise RequestInProgress("a request with this Idempotency-Key is still running")
        return _replay_events(msgspec.json.decode(existing.outcome_json))

    async def _resolve_stale_claim(
        self, identity: Identity, chat_input: ChatInput, claim: ChatRequestRow
    ) -> bool | list[ChatEvent]:
        """Settle the key of a request that never stored its outcome (its process died, or
        storing failed after the ledger moved credit).

        The ledger decides, never the claim's age alone: if the attempt's hold was captured or
        released by the service, that outcome is stored and replayed (a retry never charges
        twice); if its hold is still live, the attempt may still be running (409); only when
        its hold expired unresolved, or none was ever placed, is the key freed (returns True)
        for a retry to run as a new request.
        """
        if claim.status != STATUS_STARTED:
            return False
        ttl_s = self._billing.hold_ttl_s
        now = utc_now()
        # updated_at is the claim's creation, or (after a slow prepare) when its hold was
        # placed: either way no hold of this claim is older than it.
        if (now - claim.updated_at).total_seconds() <= ttl_s:
            return False
        trace = await self._ledger_trace(identity, claim)
        if trace.hold is not None and trace.resolution is None:
            expires_at = trace.hold.expires_at
            if expires_at is None or expires_at > now:
                return False  # the hold is live: its generation may still be streaming
        resolution = trace.resolution
        if trace.hold is not None and resolution is not None and resolution.reason != "expired":
            done = await self._outcome_from_ledger(identity, chat_input, claim, trace)
            outcome = msgspec.json.encode({"done": done, "text": ""}).decode()
            async with self._sessions() as session:
                stored = await session.execute(
                    update(ChatRequestRow)
                    .where(ChatRequestRow.id == claim.id, ChatRequestRow.status == STATUS_STARTED)
                    .values(status=STATUS_DONE, outcome_json=outcome, updated_at=utc_now())
                )
                await session.commit()
            log.warning(
                "chat_claim_recovered",
                request_id=claim.id,
                settlement=done.settlement,
                cost_credits=done.cost_credits,
            )
            if not getattr(stored, "rowcount", 0):
                return False  # the attempt stored its own outcome meanwhile; read it again
            return _replay_events({"done": msgspec.to_builtins(done), "text": ""})
        # No credit moved: no hold, or one that expired unresolved (the sweeper releases it).
        # The updated_at guard loses to a slow prepare that marked the claim meanwhile.
        async with self._sessions() as session:
            freed = await session.execute(
                delete(ChatRequestRow).where(
                    ChatRequestRow.id == claim.id,
                    ChatRequestRow.status == STATUS_STARTED,
                    ChatRequestRow.updated_at <= claim.updated_at,
                )
            )
            await session.commit()
        age_s = (now - claim.created_at).total_seconds()
        log.warning("chat_claim_abandoned", request_id=claim.id, age_s=round(age_s, 1))
        return bool(getattr(freed, "rowcount", 0))

    async def _ledger_trace(self, identity: Identity, claim: ChatRequestRow) -> _LedgerTrace:
        """The claim's hold and how it was resolved, read from the account's ledger history in
        the only window where they can lie: the hold is placed at most a slow-prepare share of
        the TTL after the claim (else the claim is marked), and resolved before it expires."""
        ttl = dt.timedelta(seconds=self._billing.hold_ttl_s)
        slack = dt.timedelta(seconds=CLOCK_SLACK_S)
        placed_by = max(claim.updated_at, claim.created_at + ttl * SLOW_PREPARE_FRACTION)
        since = claim.created_at - slack
        until = placed_by + ttl + slack
        entries: list[HistoryEntry] = []
        cursor: str | None = None
        for _ in range(TRACE_PAGES_MAX):
            page = await self._ledger.history(
                identity.account_id,
                cursor=cursor,
                limit=self._ledger.settings.history_page_max,
                types=["hold_placed", "hold_captured", "hold_released"],
                since=since,
                until=until,
            )
            entries += page.entries
            cursor = page.next_cursor
            if cursor is None:
                break
        hold = next(
            (
                e
                for e in entries
                if e.event_type == "hold_placed" and e.purpose == "chat" and e.reference == claim.id
            ),
            None,
        )
        resolution = None
        if hold is not None:
            resolution = next(
                (e for e in entries if e.event_type != "hold_placed" and e.hold_id == hold.hold_id),
                None,
            )
        return _LedgerTrace(hold=hold, resolution=resolution)

    async def _outcome_from_ledger(
        self,
        identity: Identity,
        chat_input: ChatInput,
        claim: ChatRequestRow,
        trace: _LedgerTrace,
    ) -> ChatCompleted:
        """The outcome of an attempt whose record was lost, from its ledger events (the answer
        text is gone; the tokens, cost and price are the ledger's)."""
        assert trace.hold is not None and trace.resolution is not None
        resolution = trace.resolution
        metadata = resolution.metadata
        model_requested = chat_input.model_id or self._chat.default_model
        captured = resolution.event_type == "hold_captured"
        release_reason = None if captured else resolution.reason
        return ChatCompleted(
            request_id=claim.id,
            conversation_id=chat_input.conversation_id,
            model_requested=model_requested,
            model_answered=str(metadata.get("model", model_requested)),
            prompt_tokens=int(metadata.get("prompt_tokens", 0)),
            completion_tokens=int(metadata.get("completion_tokens", 0)),
            cost_credits=abs(resolution.amount) if captured else 0,
            hold_credits=abs(trace.hold.amount),
            price_version=str(metadata.get("price_version", "")),
            finish_reason="unknown"
            if captured
            else _FINISH_OF_RELEASE.get(release_reason or "", "cancelled"),
            settlement="captured" if captured else "released",
            balance=await self.balance(identity),
            release_reason=release_reason,
        )

    async def _unclaim(self, request_id: str) -> None:
        """Forget a request refused before any credit moved, so the key can be retried."""
        async with self._sessions() as session:
            await session.execute(delete(ChatRequestRow).where(ChatRequestRow.id == request_id))
            await session.commit()

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

    def _sampling(self, options: SamplingOptions, model: ModelStatus) -> SamplingParams:
        max_tokens = options.max_tokens or self._chat.default_max_tokens
        return SamplingParams(
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            max_new_tokens=min(max_tokens, model.max_new_tokens_cap),
            seed=options.seed,
            stop=tuple(options.stop),
        )

    async def _start(
        self,
        identity: Identity,
        chat_input: ChatInput,
        model: ModelStatus,
        request_id: str,
        key: str,
        claimed_at: float,
    ) -> _Generation:
        conversation_id, messages = await self._context(identity, chat_input)
        request = GenerationRequest(
            model_id=model.id,
            messages=messages,
            sampling=self._sampling(chat_input.sampling, model),
            request_id=request_id,
            # The generation must end (timeout) before its hold can expire, so a capture never
            # races the sweeper.
            deadline_s=min(
                self._engine.settings.default_deadline_s,
                generation_deadline_s(self._billing.hold_ttl_s),
            ),
        )
        estimate = await self._engine.estimate(request)
        requested_model_id = model.id
        answering_id = getattr(estimate, "model_id", model.id)
        if answering_id != model.id:
            # The engine falls back to another model when this one cannot load; price the
            # hold at the model that will answer.
            model = self.find_model(answering_id)
        hold_credits = cost_credits(
            model.price, estimate.prompt_tokens, estimate.max_completion_tokens
        )
        hold_started = time.perf_counter()
        try:
            async with counted("place_hold"):
                receipt = await self._ledger.place_hold(
                    identity.account_id,
                    hold_credits,
                    ttl_s=self._billing.hold_ttl_s,
                    purpose="chat",
                    reference=request_id,
                    idempotency_key=f"chat:{request_id}:hold",
                )
        except InsufficientCredits as exc:
            metrics.CHAT_REQUESTS.labels("insufficient_credits").inc()
            raise CreditsExhausted(
                f"this request may cost up to {hold_credits} credits; {exc.available} available",
                available=exc.available,
                required=hold_credits,
                price=price_as_dict(model.price),
            ) from exc
        metrics.ACTIVE_HOLDS.inc()
        hold_s = time.perf_counter() - hold_started
        hold_id = str(receipt.hold_id)
        started_at = time.monotonic()
        stream: AsyncIterator[TextDelta | Finished] = _NoStream()
        generation = _Generation(
            identity=identity,
            chat_input=chat_input,
            request_id=request_id,
            idempotency_key=key,
            conversation_id=conversation_id,
            model=model,
            requested_model_id=requested_model_id,
            hold_id=hold_id,
            hold_credits=hold_credits,
            estimated_prompt_tokens=estimate.prompt_tokens,
            prompt_text=messages[-1].content,
            stream=stream,
            first_event=TextDelta(text=""),
            started_at=started_at,
            billing_s=hold_s,
        )
        try:
            if time.perf_counter() - claimed_at > self._billing.hold_ttl_s * SLOW_PREPARE_FRACTION:
                await self._mark_hold_placed(request_id)
            generation.stream = stream = aiter(self._engine.stream(request))
            # Waiting for the first event lets an engine refusal (busy, unavailable) become an
            # HTTP error instead of a broken stream; the hold is released in full.
            generation.first_event = await anext(stream)
            if conversation_id is None and chat_input.message is not None:
                created = await self._conversations.create(identity, chat_input.message)
                generation.conversation_id = created.id
        except InferenceError as exc:
            metrics.CHAT_REQUESTS.labels(exc.code).inc()
            await self._release_quietly(generation, "failed")
            raise
        except BaseException:
            # Shielded: a cancelled request still frees its hold and stops its generation.
            await asyncio.shield(self._release_quietly(generation, "cancelled"))
            raise
        return generation

    async def _mark_hold_placed(self, request_id: str) -> None:
        """After a slow prepare, stamp the claim with the hold's start, so a retry judges it by
        this hold; if a retry already freed the claim as abandoned, give the hold back."""
        async with self._sessions() as session:
            marked = await session.execute(
                update(ChatRequestRow)
                .where(ChatRequestRow.id == request_id, ChatRequestRow.status == STATUS_STARTED)
                .values(updated_at=utc_now())
            )
            await session.commit()
        if not getattr(marked, "rowcount", 0):
            raise RequestInProgress("a retry with this Idempotency-Key took over this request")

    async def _release_quietly(self, generation: _Generation, reason: str) -> None:
        """Stop the engine and release the hold of a chat refused in prepare; a ledger failure
        is logged, not raised, so the caller's own error (engine busy...) is what the client
        sees. An unreleased hold expires and the sweeper releases it."""
        await _close_stream(generation.stream)
        try:
            await self._release(generation, reason)
        except Exception as exc:
            log.error(
                "chat_release_failed",
                request_id=generation.request_id,
                error=str(exc),
                code=getattr(exc, "code", type(exc).__name__),
            )

    # -- streaming and settlement --------------------------------------------------------
    async def _run(self, generation: _Generation) -> AsyncGenerator[ChatEvent, None]:
        self._active.add(generation.request_id)
        self._idle.clear()
        metrics.ACTIVE_STREAMS.inc()
        parts: list[str] = []
        streamed_deltas = 0
        finished: Finished | None = None
        settlement: asyncio.Task[ChatCompleted] | None = None
        try:
            yield ChatStarted(
                request_id=generation.request_id,
                conversation_id=generation.conversation_id,
                model=generation.model.id,
                hold_credits=generation.hold_credits,
            )
            event: TextDelta | Finished | None = generation.first_event
            while event is not None:
                if isinstance(event, Finished):
                    finished = event
                    break
                # A model can emit NUL (tiny or confused models do); it renders as nothing and
                # PostgreSQL text cannot store it, so it never leaves the engine boundary.
                text = event.text.replace(NUL, "")
                if event.text:
                    streamed_deltas += 1  # counts generated deltas, for billing a disconnect
                if text:
                    parts.append(text)
                    yield ChatDelta(text=text)
                event = await anext(generation.stream, None)
            assert finished is not None, "the engine ends every stream with Finished"
            settlement = self._settle_task(generation, "".join(parts), finished, None)
            done = await asyncio.shield(settlement)
            if generation.request_id in self._ended_by_shutdown and done.cost_credits == 0:
                # Ended by `end_streams`: released in full (reason `cancelled`); the client is
                # told why with an `error` event rather than a `done`.
                raise ShuttingDown("the service is shutting down; the answer was cut, not charged")
            yield done
        finally:
            if settlement is None:
                # The consumer stopped (disconnect/Stop) or the task was cancelled.
                reason = "cancelled" if self._closing else "aborted"
                settlement = self._settle_task(
                    generation, "".join(parts), finished, (reason, streamed_deltas)
                )
            if not settlement.done():
                # Shielded: a second cancellation leaves the settlement running to completion.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(settlement)
            self._active.discard(generation.request_id)
            self._ended_by_shutdown.discard(generation.request_id)
            if not self._active:
                self._idle.set()
            metrics.ACTIVE_STREAMS.dec()

    def _settle_task(
        self,
        generation: _Generation,
        text: str,
        finished: Finished | None,
        stopped: tuple[str, int] | None,
    ) -> asyncio.Task[ChatCompleted]:
        task = asyncio.get_running_loop().create_task(
            self._settle(generation, text, finished, stopped)
        )
        self._settlements.add(task)
        task.add_done_callback(self._settlements.discard)
        return task

    async def _settle(
        self,
        generation: _Generation,
        text: str,
        finished: Finished | None,
        stopped: tuple[str, int] | None,
    ) -> ChatCompleted:
        """Resolve the hold once, then record the interaction, the messages and the outcome."""
        await _close_stream(generation.stream)
        if finished is None:
            # After aclose() the engine's stream holds the final event with exact counts.
            final = getattr(generation.stream, "finished", None)
            if isinstance(final, Finished):
                finished = final
        model = generation.model
        price = model.price
        prompt_tokens = generation.estimated_prompt_tokens
        completion_tokens = 0
        answered = model.id
        finish_reason = "cancelled"
        error: str | None = None
        if finished is not None:
            prompt_tokens = finished.prompt_tokens
            completion_tokens = finished.completion_tokens
            answered = finished.model_id_answered
            finish_reason = finished.finish_reason
            error = finished.error
            if answered != model.id:
                price = self._price_of(answered, price)
        release_reason: str | None = None
        if stopped is not None and finish_reason in ("error", "timeout"):
            # The consumer left as the engine failed or timed out: the answer was cut by the
            # failure, which is never billed, whichever came first.
            release_reason = "failed" if finish_reason == "error" else "timeout"
        elif stopped is not None:
            reason, streamed_deltas = stopped
            if finished is None:
                # No final count from the engine: bill the deltas streamed; each is at least
                # one generated token, so this never bills more than was generated.
                completion_tokens = streamed_deltas
            finish_reason = "cancelled"
            if reason == "cancelled" or not self._billing.partial_capture_on_disconnect:
                release_reason = reason
        elif finish_reason in ("error", "timeout"):
            release_reason = "failed" if finish_reason == "error" else "timeout"
        elif finish_reason == "cancelled":
            release_reason = "cancelled" if self._closing else "aborted"
        settle_started = time.perf_counter()
        cost = 0
        settlement: SettlementKind = "released"
        if release_reason is None:
            cost = min(
                cost_credits(price, prompt_tokens, completion_tokens), generation.hold_credits
            )
        try:
            if cost > 0:
                await self._capture(
                    generation, cost, answered, prompt_tokens, completion_tokens, price
                )
                settlement = "captured" if stopped is None else "partially_captured"
            else:
                await self._release(generation, release_reason or "aborted")
        except (HoldExpired, HoldAlreadyResolved) as exc:
            # Only when the hold outlived its TTL (a stalled process): the sweeper released it
            # in full, so nothing is charged.
            log.error("hold_resolved_elsewhere", request_id=generation.request_id, code=exc.code)
            cost, settlement, release_reason = 0, "released", "expired"
        elapsed_s = time.monotonic() - generation.started_at
        metrics.TOKENS_GENERATED.labels(answered).inc(completion_tokens)
        metrics.PROMPT_TOKENS.labels(answered).inc(prompt_tokens)
        metrics.CREDITS_CHARGED.labels(answered).inc(cost)
        if completion_tokens and elapsed_s > 0:
            metrics.TOKENS_PER_SECOND.labels(answered).observe(completion_tokens / elapsed_s)
        metrics.CHAT_REQUESTS.labels(settlement).inc()
        done = ChatCompleted(
            request_id=generation.request_id,
            conversation_id=generation.conversation_id,
            model_requested=generation.requested_model_id,
            model_answered=answered,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_credits=cost,
            hold_credits=generation.hold_credits,
            price_version=price.version,
            finish_reason=finish_reason,
            settlement=settlement,
            balance=await self.balance(generation.identity),
            error=error,
            release_reason=release_reason if cost == 0 else None,
        )
        await self._record(generation, text, done, int(elapsed_s * 1000))
        billing_s = generation.billing_s + time.perf_counter() - settle_started
        metrics.BILLING_OVERHEAD_S.observe(billing_s)
        self.billing_overhead_ms.append(billing_s * 1000)
        log.info(
            "chat_settled",
            request_id=generation.request_id,
            user_id=generation.identity.user_id,
            model=answered,
            cost_credits=cost,
            settlement=settlement,
            finish_reason=finish_reason,
            completion_tokens=completion_tokens,
        )
        return done

    def _price_of(self, model_id: str, fallback: ModelPrice) -> ModelPrice:
        for model in self._engine.models():
            if model.id == model_id:
                return model.price
        return fallback

    async def _capture(
        self,
        generation: _Generation,
        cost: int,
        answered: str,
        prompt_tokens: int,
        completion_tokens: int,
        price: ModelPrice,
    ) -> None:
        await self._settle_hold(
            "capture_hold",
            lambda: self._ledger.capture_hold(
                generation.identity.account_id,
                generation.hold_id,
                cost,
                idempotency_key=f"chat:{generation.request_id}:capture",
                metadata={
                    "model": answered,
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "price_version": price.version,
                    "request_id": generation.request_id,
                },
            ),
        )

    async def _release(self, generation: _Generation, reason: str) -> None:
        await self._settle_hold(
            "release_hold",
            lambda: self._ledger.release_hold(
                generation.identity.account_id,
                generation.hold_id,
                reason=reason,
                idempotency_key=f"chat:{generation.request_id}:release",
            ),
        )

    async def _settle_hold(self, operation: str, command: Callable[[], Awaitable[object]]) -> None:
        """Run the capture or release of a chat's hold, retrying LedgerBusy a bounded number
        of times: the command may have committed anyway, and its idempotency key replays it,
        or applies it now, never twice."""
        try:
            for attempt in range(1, LEDGER_BUSY_ATTEMPTS + 1):
                try:
                    async with counted(operation):
                        await command()
                    return
                except LedgerBusy:
                    if attempt == LEDGER_BUSY_ATTEMPTS:
                        raise
                    await asyncio.sleep(LEDGER_BUSY_BACKOFF_S * attempt)
        finally:
            # Captured, released, refused or unknown: this service no longer holds it (an
            # unresolved hold expires and the sweeper releases it).
            metrics.ACTIVE_HOLDS.dec()

    async def _abandon(self, generation: _Generation) -> None:
        """A prepared chat whose stream never started (the client left first): nothing reached
        the client, so the hold is released in full and the key freed for a retry."""
        await self._release_quietly(generation, "aborted")
        await self._unclaim(generation.request_id)
        log.info("chat_abandoned_before_stream", request_id=generation.request_id)

    async def _record(
        self, generation: _Generation, text: str, done: ChatCompleted, processing_ms: int
    ) -> None:
        chat_input = generation.chat_input
        if generation.conversation_id is not None and chat_input.message is not None:
            try:
                await self._conversations.append_exchange(
                    generation.identity,
                    generation.conversation_id,
                    chat_input.message,
                    text,
                    done.model_answered,
                )
            except Exception as exc:
                # Credit has moved: the outcome below must be stored whatever happened to the
                # conversation (deleted mid-stream: NotFound), or a retry would charge again.
                log.warning(
                    "chat_exchange_not_stored",
                    request_id=generation.request_id,
                    conversation_id=generation.conversation_id,
                    error=str(exc),
                )
        outcome = msgspec.json.encode({"done": done, "text": text}).decode()
        async with self._sessions() as session:
            session.add(
                ModelInteractionRow(
                    user_id=generation.identity.user_id,
                    chat_request_id=generation.request_id,
                    conversation_id=generation.conversation_id,
                    model_id=done.model_answered,
                    prompt=generation.prompt_text,
                    response=text,
                    prompt_tokens=done.prompt_tokens,
                    completion_tokens=done.completion_tokens,
                    credits_charged=done.cost_credits,
                    processing_ms=processing_ms,
                    finish_reason=done.finish_reason,
                )
            )
            await session.execute(
                update(ChatRequestRow)
                .where(ChatRequestRow.id == generation.request_id)
                .values(status=STATUS_DONE, outcome_json=outcome, updated_at=utc_now())
            )
            await session.commit()

    # -- shutdown --------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Refuse new chats from now on; running ones continue."""
        self._closing = True

    def end_streams(self) -> None:
        """Shutdown after the grace period: stop every running generation; each stream then
        settles (hold released, reason `cancelled`) and ends with an error `shutting_down`."""
        self._closing = True
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


class _NoStream:
    """The stream of a generation not yet started: empty."""

    def __aiter__(self) -> _NoStream:
        return self

    async def __anext__(self) -> TextDelta | Finished:
        raise StopAsyncIteration


async def _close_stream(stream: AsyncIterator[TextDelta | Finished]) -> None:
    """Stop generation: closing the engine's stream ends the request within one step."""
    closer = getattr(stream, "aclose", None)
    if closer is None:
        return
    with contextlib.suppress(RuntimeError, StopAsyncIteration):
        await closer()
