"""/v1/models and /v1/chat/completions, streaming or not, billed through the chat service
(same holds, captures and idempotency as /api/chat)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_200_OK

from inference.requests import ChatMessage, Role
from ledger.domain import MAX_KEY_LENGTH
from web.auth import SCOPE, SECURITY
from web.domain.accounts.schemas import Identity
from web.domain.chat.deps import CHAT_DEPENDENCIES
from web.domain.chat.schemas import ChatCompleted, ChatDelta, ChatStarted, SamplingOptions
from web.domain.chat.service import ChatInput, ChatService, PreparedChat
from web.domain.chat.sse import settle_unstreamed, stream_error_body
from web.domain.openai.schemas import (
    AssistantMessage,
    Billing,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ModelCard,
    ModelList,
    OpenAIMessage,
    Usage,
    chunk,
)
from web.domain.receipts.services import receipt_url
from web.errors import ValidationFailed
from web.exception_handlers import error_body
from web.logging import get_logger

log = get_logger(__name__)
FINISH_REASONS = {"stop": "stop", "length": "length"}
# Answers cut by the engine are released in full and answered as errors: status, code, message.
FAILED_FINISH: dict[str, tuple[int, str, str]] = {
    "timeout": (504, "generation_timeout", "the generation ran out of time; nothing was charged"),
    "error": (500, "generation_failed", "the generation failed; nothing was charged"),
}
HTTP_CLIENT_CLOSED_REQUEST = 499
# OpenAI's "developer" role is its newer name for "system".
ROLE_MAP: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}


def _text_of(message: OpenAIMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text or "" for part in message.content if part.type == "text")


def chat_input(data: JSONBody[ChatCompletionRequest], idempotency_key: str | None) -> ChatInput:
    messages = tuple(ChatMessage(role=ROLE_MAP[m.role], content=_text_of(m)) for m in data.messages)
    if messages[-1].role != "user":
        raise ValidationFailed("the last message must have role 'user'", field="messages")
    stop = [data.stop] if isinstance(data.stop, str) else list(data.stop or [])
    defaults = SamplingOptions()
    return ChatInput(
        model_id=data.model,
        messages=messages,
        sampling=SamplingOptions(
            temperature=defaults.temperature if data.temperature is None else data.temperature,
            top_p=defaults.top_p if data.top_p is None else data.top_p,
            max_tokens=data.max_completion_tokens or data.max_tokens,
            seed=data.seed,
            stop=stop,
        ),
        idempotency_key=idempotency_key,
        # OpenAI clients name a model and expect that model: no silent swap.
        serve_fallback=False,
        # OpenAI clients expect max_tokens honoured or an error: shrinking is opt-in.
        shrink_to_affordable=data.x_ledgerchat is not None
        and data.x_ledgerchat.shrink_to_affordable,
    )


def _usage(done: ChatCompleted) -> Usage:
    return Usage(
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
        total_tokens=done.prompt_tokens + done.completion_tokens,
    )


def _billing(done: ChatCompleted) -> Billing:
    return Billing(
        cost_credits=done.cost_credits,
        price_version=done.price_version,
        balance_available=done.balance.available,
        request_id=done.request_id,
        fallback_from=None if done.model_answered == done.model_requested else done.model_requested,
        receipt_url=receipt_url(done.request_id),
        max_tokens_shrunk_to=done.max_tokens_shrunk_to,
    )


def _failure(done: ChatCompleted) -> tuple[int, dict[str, Any]] | None:
    """The HTTP status and error body of an answer cut by a timeout or an engine error (never
    billed), or None for an answer that stands."""
    if done.finish_reason not in FAILED_FINISH:
        return None
    status, code, default = FAILED_FINISH[done.finish_reason]
    details = {
        "request_id": done.request_id,
        "cost_credits": done.cost_credits,
        "release_reason": done.release_reason,
        "completion_tokens": done.completion_tokens,
    }
    return status, error_body(code, done.error or default, details)


async def openai_chunks(
    prepared: PreparedChat, model: str, include_usage: bool = True
) -> AsyncIterator[ServerSentEventMessage]:
    """The answer as OpenAI chunks; the last one (empty choices, usage and billing) unless the
    client asked for no usage chunk (`stream_options.include_usage: false`)."""
    completion_id = f"chatcmpl-{prepared.request_id}"
    created = int(time.time())

    def message(body: object) -> ServerSentEventMessage:
        return ServerSentEventMessage(data=msgspec.json.encode(body).decode())

    # The events start before the first yield: a client that leaves at the first chunk closes
    # them, and with them the hold.
    async with contextlib.aclosing(prepared.events()) as events:
        try:
            started = await anext(events)
            if isinstance(started, ChatStarted) and not started.replayed:
                model = started.model  # the model that answers (a fallback, when allowed)
            yield message(
                chunk(completion_id, created, model, {"role": "assistant", "content": ""})
            )
            async for event in events:
                if isinstance(event, ChatDelta):
                    yield message(chunk(completion_id, created, model, {"content": event.text}))
                elif isinstance(event, ChatCompleted):
                    failure = _failure(event)
                    if failure is not None:
                        # No finish_reason "stop" for a cut, unbilled answer: an error chunk.
                        yield message(failure[1])
                        continue
                    reason = FINISH_REASONS.get(event.finish_reason, "stop")
                    yield message(chunk(completion_id, created, event.model_answered, {}, reason))
                    if not include_usage:
                        continue
                    yield message(
                        chunk(
                            completion_id,
                            created,
                            event.model_answered,
                            None,
                            usage=_usage(event),
                            billing=_billing(event),
                        )
                    )
        except Exception as exc:
            yield message(stream_error_body(prepared, exc))
    yield ServerSentEventMessage(data="[DONE]")


async def collect(
    prepared: PreparedChat, request: Request[Any, Any, Any]
) -> tuple[str, ChatCompleted] | None:
    """The whole answer of a non-streaming completion, or None when the client disconnected
    first: then the events are closed at once, so generation stops and only what was
    generated is billed, as for a stream."""
    parts: list[str] = []
    done: ChatCompleted | None = None

    async def consume() -> None:
        nonlocal done
        async with contextlib.aclosing(prepared.events()) as events:
            async for event in events:
                if isinstance(event, ChatDelta):
                    parts.append(event.text)
                elif isinstance(event, ChatCompleted):
                    done = event

    async def disconnect() -> None:
        # The body has been read: the next message is http.disconnect when the client leaves.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    consumer = asyncio.create_task(consume())
    watcher = asyncio.create_task(disconnect())
    try:
        await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not consumer.done():
            consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        try:
            await consumer
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise
    if done is None:
        log.info("openai_client_disconnected", request_id=prepared.request_id)
        return None
    return "".join(parts), done


class OpenAIController(Controller):
    path = "/v1"
    tags = ("openai",)
    dependencies = CHAT_DEPENDENCIES
    security = SECURITY

    @get("/models")
    async def models(
        self, identity: NamedDependency[Identity], chat_service: NamedDependency[ChatService]
    ) -> ModelList:
        """Models that can answer now (OpenAI format)."""
        created = int(time.time())
        return ModelList(
            data=[ModelCard(id=m.id, created=created) for m in chat_service.models() if m.available]
        )

    @post("/chat/completions", status_code=HTTP_200_OK, responses=None, opt={SCOPE: "chat"})
    async def chat_completions(
        self,
        identity: NamedDependency[Identity],
        chat_service: NamedDependency[ChatService],
        data: JSONBody[ChatCompletionRequest],
        request: Request[Any, Any, Any],
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(name="Idempotency-Key", min_length=1, max_length=MAX_KEY_LENGTH),
        ] = None,
    ) -> Response[ChatCompletion] | Response[dict[str, Any]] | ServerSentEvent:
        """OpenAI chat completions, billed like /api/chat; usage in the final chunk."""
        prepared = await chat_service.prepare(identity, chat_input(data, idempotency_key))
        if data.stream:
            include_usage = data.stream_options is None or data.stream_options.include_usage
            return ServerSentEvent(
                openai_chunks(prepared, data.model, include_usage),
                background=settle_unstreamed(prepared),
            )
        try:
            collected = await collect(prepared, request)
        finally:
            await prepared.cancel()  # settles nothing unless the events never started
        if collected is None:
            return Response(
                error_body("client_disconnected", "the client closed the connection"),
                status_code=HTTP_CLIENT_CLOSED_REQUEST,
            )
        text, done = collected
        failure = _failure(done)
        if failure is not None:
            return Response(failure[1], status_code=failure[0])
        return Response(
            ChatCompletion(
                id=f"chatcmpl-{done.request_id}",
                created=int(time.time()),
                model=done.model_answered,
                choices=[
                    Choice(
                        index=0,
                        message=AssistantMessage(role="assistant", content=text),
                        finish_reason=FINISH_REASONS.get(done.finish_reason, "stop"),
                    )
                ],
                usage=_usage(done),
                x_ledgerchat=_billing(done),
            )
        )
