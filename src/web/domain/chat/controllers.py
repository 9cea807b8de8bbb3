"""HTTP handlers of chat: POST /api/chat (Server-Sent Events), /api/models and
/api/conversations."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, QueryParameter
from litestar.response import ServerSentEvent
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT

from ledger.domain import MAX_KEY_LENGTH
from web.auth import SCOPE, SECURITY
from web.domain.accounts.schemas import Identity
from web.domain.billing.schemas import PriceView
from web.domain.chat.conversations import ConversationsService
from web.domain.chat.deps import CHAT_DEPENDENCIES, CONVERSATIONS_DEPENDENCIES
from web.domain.chat.schemas import (
    ChatRequest,
    ConversationDetail,
    ConversationView,
    RenameConversationRequest,
)
from web.domain.chat.service import ChatInput, ChatService
from web.domain.chat.sse import settle_unstreamed, sse_events
from web.logging import get_logger
from web.params import ConversationId

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
    price: PriceView
    """The rates again with their rounding and a worked example (`price.example`)."""
    loading_percent: int | None = None
    """While a load of the model is in flight (its preparation, e.g. a GGUF conversion,
    included): how far, 0-99; null otherwise. A chat until then gets 503 `model_loading`."""
    loading_stage: str | None = None
    """While it loads: what it is doing now ("converting: weights")."""


class ChatController(Controller):
    path = "/api"
    tags = ("chat",)
    dependencies = CHAT_DEPENDENCIES
    security = SECURITY

    @post("/chat", status_code=HTTP_200_OK, opt={SCOPE: "chat"})
    async def chat(
        self,
        identity: NamedDependency[Identity],
        chat_service: NamedDependency[ChatService],
        data: JSONBody[ChatRequest],
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(name="Idempotency-Key", min_length=1, max_length=MAX_KEY_LENGTH),
        ] = None,
    ) -> ServerSentEvent:
        """Stream an answer as Server-Sent Events: `start`, `delta`..., then `done` with tokens,
        cost, price version, answering model and new balance. 402 before any generation when
        the worst-case cost is not covered."""
        prepared = await chat_service.prepare(
            identity,
            ChatInput(
                model_id=data.model,
                message=data.message,
                conversation_id=data.conversation_id,
                sampling=data.sampling,
                idempotency_key=idempotency_key,
                shrink_to_affordable=data.shrink_to_affordable,
            ),
        )
        return ServerSentEvent(
            sse_events(prepared),
            headers={"Cache-Control": "no-store"},
            background=settle_unstreamed(prepared),
        )

    @get("/models")
    async def models(
        self, identity: NamedDependency[Identity], chat_service: NamedDependency[ChatService]
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
                price=PriceView.of(m.price),
                loading_percent=m.loading_percent,
                loading_stage=m.loading_stage,
            )
            for m in chat_service.models()
        ]


class ConversationsController(Controller):
    path = "/api/conversations"
    tags = ("conversations",)
    dependencies = CONVERSATIONS_DEPENDENCIES
    security = SECURITY

    @get("/")
    async def list_conversations(
        self,
        identity: NamedDependency[Identity],
        conversations_service: NamedDependency[ConversationsService],
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
    ) -> list[ConversationView]:
        """Most recently updated first."""
        return await conversations_service.list(identity, limit=limit, offset=offset)

    @get("/{conversation_id:str}")
    async def get_conversation(
        self,
        identity: NamedDependency[Identity],
        conversations_service: NamedDependency[ConversationsService],
        conversation_id: ConversationId,
    ) -> ConversationDetail:
        return await conversations_service.get(identity, conversation_id)

    @patch("/{conversation_id:str}")
    async def rename(
        self,
        identity: NamedDependency[Identity],
        conversations_service: NamedDependency[ConversationsService],
        conversation_id: ConversationId,
        data: JSONBody[RenameConversationRequest],
    ) -> ConversationView:
        return await conversations_service.rename(identity, conversation_id, data.title)

    @delete("/{conversation_id:str}", status_code=HTTP_204_NO_CONTENT)
    async def delete_conversation(
        self,
        identity: NamedDependency[Identity],
        conversations_service: NamedDependency[ConversationsService],
        conversation_id: ConversationId,
    ) -> None:
        await conversations_service.delete(identity, conversation_id)
