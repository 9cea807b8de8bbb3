"""HTTP handlers of chat: POST /api/chat (Server-Sent Events), /api/models and
/api/conversations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT

from inference.errors import InferenceError
from ledger.errors import LedgerError
from web.auth import IDENTITY_DEPENDENCY, SECURITY
from web.domain.accounts.schemas import Identity
from web.domain.chat.schemas import (
    ChatCompleted,
    ChatDelta,
    ChatRequest,
    ChatStarted,
    ConversationDetail,
    ConversationView,
    RenameConversationRequest,
)
from web.domain.chat.service import ChatInput, PreparedChat
from web.errors import ServiceError
from web.exception_handlers import error_body
from web.logging import get_logger
from web.params import ConversationId
from web.services import Services

log = get_logger(__name__)


class ModelView(msgspec.Struct):
    id: str
    display_name: str
    available: bool
    loaded: bool
    unavailable_reason: str | None
    per_message_credits: int
    prompt_credits_per_1k_tokens: int
    completion_credits_per_1k_tokens: int
    price_version: str
    context_limit_tokens: int
    max_new_tokens_cap: int


async def sse_events(prepared: PreparedChat) -> AsyncIterator[ServerSentEventMessage]:
    """start, delta..., done; an error after the stream began becomes an `error` event."""
    try:
        async for event in prepared.events():
            if isinstance(event, ChatDelta):
                name = "delta"
            elif isinstance(event, ChatStarted):
                name = "start"
            else:
                assert isinstance(event, ChatCompleted)
                name = "done"
            yield ServerSentEventMessage(data=msgspec.json.encode(event).decode(), event=name)
    except Exception as exc:
        body = stream_error_body(prepared, exc)
        yield ServerSentEventMessage(data=msgspec.json.encode(body).decode(), event="error")


def stream_error_body(prepared: PreparedChat, exc: Exception) -> dict[str, Any]:
    """Log a stream that ended with an error after it began, and give the error body sent as
    its last event (SSE `error` event here, an error chunk on /v1)."""
    if isinstance(exc, ServiceError | LedgerError | InferenceError):
        # An expected ending (shutting down, ledger busy, engine failure): its code says it.
        log.warning(
            "chat_stream_ended", request_id=prepared.request_id, code=exc.code, error=str(exc)
        )
    else:
        log.exception("chat_stream_failed", request_id=prepared.request_id)
    return error_body(str(getattr(exc, "code", "internal_error")), str(exc))


def settle_unstreamed(prepared: PreparedChat) -> BackgroundTask:
    """Runs once the response is over, however it ended: a client that left before the body
    started never iterates the events, so this releases the hold and frees the key (a no-op
    for a chat that streamed; its own settlement ran)."""
    return BackgroundTask(prepared.cancel)


class ChatController(Controller):
    path = "/api"
    tags = ("chat",)
    dependencies = IDENTITY_DEPENDENCY
    security = SECURITY

    @post("/chat", status_code=HTTP_200_OK)
    async def chat(
        self,
        identity: NamedDependency[Identity],
        services: NamedDependency[Services],
        data: JSONBody[ChatRequest],
        idempotency_key: Annotated[
            str | None, HeaderParameter(name="Idempotency-Key", min_length=1, max_length=200)
        ] = None,
    ) -> ServerSentEvent:
        """Stream an answer as Server-Sent Events: `start`, `delta`..., then `done` with tokens,
        cost, price version, answering model and new balance. 402 before any generation when
        the worst-case cost is not covered."""
        prepared = await services.chat.prepare(
            identity,
            ChatInput(
                model_id=data.model,
                message=data.message,
                conversation_id=data.conversation_id,
                sampling=data.sampling,
                idempotency_key=idempotency_key,
            ),
        )
        return ServerSentEvent(
            sse_events(prepared),
            headers={"Cache-Control": "no-store"},
            background=settle_unstreamed(prepared),
        )

    @get("/models")
    async def models(
        self, identity: NamedDependency[Identity], services: NamedDependency[Services]
    ) -> list[ModelView]:
        """The catalog with prices and load state."""
        return [
            ModelView(
                id=m.id,
                display_name=m.display_name,
                available=m.available,
                loaded=m.loaded,
                unavailable_reason=m.unavailable_reason,
                per_message_credits=m.price.per_message_credits,
                prompt_credits_per_1k_tokens=m.price.prompt_credits_per_1k_tokens,
                completion_credits_per_1k_tokens=m.price.completion_credits_per_1k_tokens,
                price_version=m.price.version,
                context_limit_tokens=m.context_limit_tokens,
                max_new_tokens_cap=m.max_new_tokens_cap,
            )
            for m in services.chat.models()
        ]


class ConversationsController(Controller):
    path = "/api/conversations"
    tags = ("conversations",)
    dependencies = IDENTITY_DEPENDENCY
    security = SECURITY

    @get("/")
    async def list_conversations(
        self,
        identity: NamedDependency[Identity],
        services: NamedDependency[Services],
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
    ) -> list[ConversationView]:
        """Most recently updated first."""
        return await services.conversations.list(identity, limit=limit, offset=offset)

    @get("/{conversation_id:str}")
    async def get_conversation(
        self,
        identity: NamedDependency[Identity],
        services: NamedDependency[Services],
        conversation_id: ConversationId,
    ) -> ConversationDetail:
        return await services.conversations.get(identity, conversation_id)

    @patch("/{conversation_id:str}")
    async def rename(
        self,
        identity: NamedDependency[Identity],
        services: NamedDependency[Services],
        conversation_id: ConversationId,
        data: JSONBody[RenameConversationRequest],
    ) -> ConversationView:
        return await services.conversations.rename(identity, conversation_id, data.title)

    @delete("/{conversation_id:str}", status_code=HTTP_204_NO_CONTENT)
    async def delete_conversation(
        self,
        identity: NamedDependency[Identity],
        services: NamedDependency[Services],
        conversation_id: ConversationId,
    ) -> None:
        await services.conversations.delete(identity, conversation_id)
