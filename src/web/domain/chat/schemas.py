"""Wire types of chat: the request body, and the events a chat stream yields (the same events
feed Server-Sent Events, the OpenAI-compatible stream and the Gradio UI)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from inference.catalog import MAX_NEW_TOKENS_CAP
from web.settings import MAX_MESSAGE_CHARS

MAX_STOP_STRINGS = 8
MAX_TITLE_CHARS = 200
"""Longest conversation title (the UI's rename box and the `conversations.title` column agree)."""


class SamplingOptions(msgspec.Struct, forbid_unknown_fields=True):
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.95
    top_k: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 64
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=MAX_NEW_TOKENS_CAP)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None
    stop: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]],
        msgspec.Meta(max_length=MAX_STOP_STRINGS),
    ] = msgspec.field(default_factory=list)


class ChatRequest(msgspec.Struct, forbid_unknown_fields=True):
    message: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MESSAGE_CHARS)]
    conversation_id: Annotated[str, msgspec.Meta(max_length=36)] | None = None
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    sampling: SamplingOptions = msgspec.field(default_factory=SamplingOptions)
    shrink_to_affordable: bool = False
    """Lower max_tokens to what the balance and budgets can pay for instead of answering 402
    (`done` then says `max_tokens_shrunk_to`)."""


class BalanceView(msgspec.Struct):
    posted: int
    held: int
    available: int


class ChatStarted(msgspec.Struct, tag="start"):
    request_id: str
    conversation_id: str | None
    model: str
    hold_credits: int
    replayed: bool = False


class ChatDelta(msgspec.Struct, tag="delta"):
    text: str


SettlementKind = Literal["captured", "partially_captured", "released"]


class ChatCompleted(msgspec.Struct, tag="done"):
    request_id: str
    conversation_id: str | None
    model_requested: str
    model_answered: str
    prompt_tokens: int
    completion_tokens: int
    cost_credits: int
    hold_credits: int
    price_version: str
    finish_reason: str
    settlement: SettlementKind
    balance: BalanceView
    error: str | None = None
    release_reason: str | None = None
    replayed: bool = False
    max_tokens_shrunk_to: int | None = None
    """Set when max_tokens was lowered to what the balance or a budget could pay for."""


ChatEvent = ChatStarted | ChatDelta | ChatCompleted


class ConversationView(msgspec.Struct):
    id: str
    title: str
    created_at: dt.datetime
    updated_at: dt.datetime


class MessageUsage(msgspec.Struct):
    """What a stored reply cost, as its settlement said."""

    request_id: str
    cost_credits: int
    prompt_tokens: int
    completion_tokens: int
    model_requested: str
    settlement: str
    release_reason: str | None = None

    @classmethod
    def of(cls, done: ChatCompleted) -> MessageUsage:
        return cls(
            request_id=done.request_id,
            cost_credits=done.cost_credits,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            model_requested=done.model_requested,
            settlement=done.settlement,
            release_reason=done.release_reason,
        )


class MessageView(msgspec.Struct):
    id: int
    role: str
    content: str
    model: str | None
    created_at: dt.datetime
    usage: MessageUsage | None = None
    """Assistant messages stored since costs were kept; None on user messages and older
    replies."""


class ConversationDetail(msgspec.Struct):
    conversation: ConversationView
    messages: list[MessageView]


class RenameConversationRequest(msgspec.Struct, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TITLE_CHARS)]
