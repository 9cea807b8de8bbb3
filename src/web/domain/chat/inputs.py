"""What a chat asks for, from any front end, and the checks it must pass before anything is
claimed, held or generated: `ChatInput`, its fingerprint (for the Idempotency-Key), the input
rules, and the engine request built from it."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import msgspec

from inference.events import ModelStatus
from inference.requests import ChatMessage, SamplingParams
from web.domain.chat.schemas import SamplingOptions
from web.errors import ValidationFailed
from web.settings import BillingSettings, ChatSettings

NUL = "\x00"
HOLD_MARGIN_FRACTION = 0.25
HOLD_MARGIN_MAX_S = 60.0


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
    serve_fallback: bool = True
    """False (/v1): a model that cannot answer is an error unless its catalog entry sets
    `fallback_on_v1`; True: its fallback answers and the reply says so."""
    shrink_to_affordable: bool = False
    """Lower max_tokens to what is affordable instead of a 402 (the page: the billing setting
    `shrink_to_affordable`; the APIs: when the request asks)."""

    def fingerprint(self) -> str:
        payload = {
            "model": self.model_id,
            "message": self.message,
            "messages": [[m.role, m.content] for m in self.messages or ()],
            "conversation_id": self.conversation_id,
            "sampling": msgspec.to_builtins(self.sampling),
        }
        if self.shrink_to_affordable:
            # Only when asked, so the keys of requests without it fingerprint as before.
            payload["shrink_to_affordable"] = self.shrink_to_affordable
        return hashlib.sha256(msgspec.json.encode(payload)).hexdigest()


def generation_deadline_s(hold_ttl_s: float) -> float:
    """A generation deadline that ends well before the hold expires."""
    return hold_ttl_s - min(HOLD_MARGIN_MAX_S, hold_ttl_s * HOLD_MARGIN_FRACTION)


def validate_chat_input(
    chat_input: ChatInput, chat: ChatSettings, billing: BillingSettings
) -> None:
    """Raise ValidationFailed naming the first rule the input breaks."""
    if (chat_input.message is None) == (chat_input.messages is None):
        raise ValidationFailed("give either a message or a list of messages")
    _check_no_nul(chat_input)
    if chat_input.message is not None:
        if not chat_input.message.strip():
            raise ValidationFailed("message must not be blank", field="message")
        if len(chat_input.message) > chat.max_message_chars:
            raise ValidationFailed(
                f"message is longer than {chat.max_message_chars} characters", field="message"
            )
    if chat_input.messages is not None:
        # The answer is to the last message: a blank one is refused as /api/chat refuses a
        # blank message (content null, whitespace, or parts without text all count).
        if not chat_input.messages or not chat_input.messages[-1].content.strip():
            raise ValidationFailed("the last message must not be blank", field="messages")
        total = sum(len(m.content) for m in chat_input.messages)
        if total > chat.max_message_chars * 4:
            raise ValidationFailed("messages are too long in total", field="messages")
    max_tokens = chat_input.sampling.max_tokens
    if max_tokens is not None and max_tokens > chat.max_max_tokens:
        raise ValidationFailed(
            f"max_tokens may be at most {chat.max_max_tokens}", field="max_tokens"
        )
    key = chat_input.idempotency_key
    if key is not None and not 1 <= len(key) <= billing.max_idempotency_key_length:
        raise ValidationFailed(
            f"Idempotency-Key must be 1-{billing.max_idempotency_key_length} characters"
        )


def _check_no_nul(chat_input: ChatInput) -> None:
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


def sampling_params(
    options: SamplingOptions, model: ModelStatus, chat: ChatSettings
) -> SamplingParams:
    """The engine's sampling parameters of a chat, its max tokens capped by the model."""
    max_tokens = options.max_tokens or chat.default_max_tokens
    return SamplingParams(
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        max_new_tokens=min(max_tokens, model.max_new_tokens_cap),
        seed=options.seed,
        stop=tuple(options.stop),
    )
