"""The wire shapes of the engine server: request bodies decoded and checked by msgspec (unknown
fields ignored, as OpenAI clients send many), and builders of the OpenAI-compatible answers
(completion, stream chunk, usage, error) and vLLM's `/tokenize` answer."""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec

from inference.events import Finished

OPENAI_ROLES = ("system", "developer", "user", "assistant")


class ContentPart(msgspec.Struct, frozen=True):
    type: str
    text: str | None = None


class Message(msgspec.Struct, frozen=True):
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class ChatCompletionBody(msgspec.Struct, frozen=True):
    """POST /v1/chat/completions. Fields the engine cannot honour are refused, not ignored."""

    model: str
    messages: list[Message]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    logprobs: bool | None = None
    tools: list[Any] | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class TokenizeBody(msgspec.Struct, frozen=True):
    """POST /tokenize, as vLLM takes it: a chat (`messages`) or a plain `prompt`."""

    model: str
    messages: list[Message] | None = None
    prompt: str | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = True


def usage(finished: Finished) -> dict[str, Any]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": finished.cached_prompt_tokens},
    }


class ChunkWriter:
    """Builds the `chat.completion.chunk` objects of one streamed answer (same id, created,
    model on each; `usage: null` on every chunk when the client asked for a usage chunk)."""

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time())

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            body["usage"] = None
        return sse_data(body)

    def usage_chunk(self, finished: Finished) -> bytes:
        return sse_data(
            {
                "id": self.completion_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage(finished),
            }
        )


def completion(
    completion_id: str, model: str, text: str, finished: Finished, finish_reason: str
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(finished),
    }


ErrorType = Literal[
    "invalid_request_error", "authentication_error", "not_found_error", "server_error"
]


def error_body(
    message: str, error_type: ErrorType, code: str, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def sse_data(body: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
