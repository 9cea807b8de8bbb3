"""OpenAI chat-completions wire types (the subset the service honours). Unknown request fields
are ignored, as OpenAI clients send many optional ones."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from inference.catalog import MAX_NEW_TOKENS_CAP

MAX_MESSAGES = 256


class ContentPart(msgspec.Struct):
    type: str
    text: str | None = None


class OpenAIMessage(msgspec.Struct):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = True


class LedgerchatOptions(msgspec.Struct, forbid_unknown_fields=True):
    """ledgerchat's request extension (`x_ledgerchat` in the body)."""

    shrink_to_affordable: bool = False
    """Lower max_tokens to what the balance and budgets can pay for instead of a 402; the
    answer's `x_ledgerchat.max_tokens_shrunk_to` then says to what."""


class ChatCompletionRequest(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    messages: Annotated[list[OpenAIMessage], msgspec.Meta(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool = False
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=MAX_NEW_TOKENS_CAP)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1, le=MAX_NEW_TOKENS_CAP)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None
    stop: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
        | Annotated[
            list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]],
            msgspec.Meta(max_length=8),
        ]
        | None
    ) = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    x_ledgerchat: LedgerchatOptions | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(msgspec.Struct):
    role: str
    content: str


class Choice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str


class Billing(msgspec.Struct):
    """ledgerchat's addition: what the answer cost and what is left."""

    cost_credits: int
    price_version: str
    balance_available: int
    request_id: str
    fallback_from: str | None = None
    """The model asked for, when its catalog fallback answered instead (`model` names the
    one that answered); None when the requested model answered."""
    receipt_url: str | None = None
    """Where the reply's verifiable receipt is (`GET`, same credentials)."""
    max_tokens_shrunk_to: int | None = None
    """Set when the request opted into `shrink_to_affordable` and max_tokens was lowered."""


class ChatCompletion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    x_ledgerchat: Billing
    object: str = "chat.completion"


class ModelCard(msgspec.Struct):
    id: str
    created: int
    owned_by: str = "ledgerchat"
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


def chunk(
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: Usage | None = None,
    billing: Billing | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = msgspec.to_builtins(usage)
    if billing is not None:
        body["x_ledgerchat"] = msgspec.to_builtins(billing)
    return body
