"""Litestar dependency providers of the chat context: a chat or /v1 handler is given the chat
service (or the conversation store), never the container of every service."""

from __future__ import annotations

from typing import Any

from litestar.datastructures import State
from litestar.di import Provide

from web.auth import IDENTITY_DEPENDENCY
from web.domain.chat.conversations import ConversationsService
from web.domain.chat.service import ChatService


def provide_chat_service(state: State) -> ChatService:
    chat: ChatService = state.services.chat
    return chat


def provide_conversations_service(state: State) -> ConversationsService:
    conversations: ConversationsService = state.services.conversations
    return conversations


# Each with the caller's identity, which every chat handler needs too.
CHAT_DEPENDENCIES: dict[str, Any] = {
    **IDENTITY_DEPENDENCY,
    "chat_service": Provide(provide_chat_service, sync_to_thread=False),
}
CONVERSATIONS_DEPENDENCIES: dict[str, Any] = {
    **IDENTITY_DEPENDENCY,
    "conversations_service": Provide(provide_conversations_service, sync_to_thread=False),
}
