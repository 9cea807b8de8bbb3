"""/v1/models and /v1/chat/completions, streaming or not, billed through the chat service
(same holds, captures and idempotency as /api/chat)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_200_OK

from inference.requests import ChatMessage, Role
from web.auth import IDENTITY_DEPENDENCY, SECURITY, check_chat_rate
from web.domain.accounts.schemas import Identity
from web.domain.chat.schemas import ChatCompleted, ChatDelta, SamplingOptions
from web.domain.chat.services import ChatInput, PreparedChat
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
from web.errors import ValidationFailed
from web.exception_handlers import error_body
from web.logging import get_logger
from web.services import Services

log = get_logger(__name__)
FINISH_REASONS = {"stop": "stop", "length": "length"}
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
    )


async def openai_chunks(
    prepared: PreparedChat, model: str
) -> AsyncIterator[ServerSentEventMessage]:
    completion_id = f"chatcmpl-{prepared.request_id}"
    created = int(time.time())

    def message(body: object) -> ServerSentEventMessage:
        return ServerSentEventMessage(data=msgspec.json.encode(body).decode())

    yield message(chunk(completion_id, created, model, {"role": "assistant", "content": ""}))
    try:
        async for event in prepared.events():
            if isinstance(event, ChatDelta):
                yield message(chunk(completion_id, created, model, {"content": event.text}))
            elif isinstance(event, ChatCompleted):
                if event.error:
                    yield message(error_body("generation_failed", event.error))
                reason = FINISH_REASONS.get(event.finish_reason, "stop")
                yield message(chunk(completion_id, created, event.model_answered, {}, reason))
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
        log.exception("openai_stream_failed", request_id=prepared.request_id)
        yield message(error_body(str(getattr(exc, "code", "internal_error")), str(exc)))
    yield ServerSentEventMessage(data="[DONE]")


class OpenAIController(Controller):
    path = "/v1"
    tags = ("openai",)
    dependencies = IDENTITY_DEPENDENCY
    security = SECURITY

    @get("/models")
    async def models(
        self, identity: NamedDependency[Identity], services: NamedDependency[Services]
    ) -> ModelList:
        """Models that can answer now (OpenAI format)."""
        created = int(time.time())
        return ModelList(
            data=[
                ModelCard(id=m.id, created=created) for m in services.chat.models() if m.available
            ]
        )

    @post("/chat/completions", status_code=HTTP_200_OK, responses=None)
    async def chat_completions(
        self,
        identity: NamedDependency[Identity],
        services: NamedDependency[Services],
        data: JSONBody[ChatCompletionRequest],
        idempotency_key: Annotated[
            str | None, HeaderParameter(name="Idempotency-Key", min_length=1, max_length=200)
        ] = None,
    ) -> Response[ChatCompletion] | ServerSentEvent:
        """OpenAI chat completions, billed like /api/chat; usage in the final chunk."""
        check_chat_rate(services, identity)
        prepared = await services.chat.prepare(identity, chat_input(data, idempotency_key))
        if data.stream:
            return ServerSentEvent(openai_chunks(prepared, data.model))
        parts: list[str] = []
        done: ChatCompleted | None = None
        async for event in prepared.events():
            if isinstance(event, ChatDelta):
                parts.append(event.text)
            elif isinstance(event, ChatCompleted):
                done = event
        assert done is not None
        return Response(
            ChatCompletion(
                id=f"chatcmpl-{done.request_id}",
                created=int(time.time()),
                model=done.model_answered,
                choices=[
                    Choice(
                        index=0,
                        message=AssistantMessage(role="assistant", content="".join(parts)),
                        finish_reason=FINISH_REASONS.get(done.finish_reason, "stop"),
                    )
                ],
                usage=_usage(done),
                x_ledgerchat=_billing(done),
            )
        )
