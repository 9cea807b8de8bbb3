"""The OpenAI chat-completions wire format as a remote backend speaks it: the request body (always
with `max_tokens` and `stream_options.include_usage`), the server-sent chunks parsed into what
the backend needs (text, finish reason, usage), and vLLM's /tokenize and /v1/models answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from inference.events import FinishReason
from inference.requests import PreparedRequest

# An upstream's finish reasons in the engine's terms; anything else ends as "stop".
FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "cancelled",
    "eos": "stop",
}
MAX_CHUNK_LINE_BYTES = 1_000_000


class WireError(ValueError):
    """The upstream sent something that is not the protocol (or an error object)."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Chunk:
    """One parsed `data:` line: text (may be empty), finish reason when the choice ended, usage
    when present (the last chunk, or every chunk with continuous usage stats)."""

    text: str
    finish_reason: str | None
    usage: Usage | None


def chat_body(
    prepared: PreparedRequest,
    upstream_model: str,
    *,
    stream: bool = True,
    continuous_usage_stats: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The body of POST /v1/chat/completions for a prepared request."""
    request = prepared.request
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        # Always: the upstream must never generate more than was held.
        "max_tokens": prepared.max_completion_tokens,
        "temperature": 0.0 if sampling.greedy else sampling.temperature,
        "top_p": sampling.top_p,
        "stream": stream,
    }
    if sampling.top_k:
        body["top_k"] = sampling.top_k  # an extension that vLLM, llama-server and SGLang read
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if stream:
        options: dict[str, Any] = {"include_usage": True}
        if continuous_usage_stats:
            options["continuous_usage_stats"] = True
        body["stream_options"] = options
    if extra:
        body = {**extra, **body}  # never over the fields that bound what is billed
    return body


def tokenize_body(prepared: PreparedRequest, upstream_model: str) -> dict[str, Any]:
    """vLLM's /tokenize for chat messages, with the generation prompt the answer starts from."""
    return {
        "model": upstream_model,
        "messages": [{"role": m.role, "content": m.content} for m in prepared.request.messages],
        "add_generation_prompt": True,
    }


def tokenize_count(answer: Any) -> tuple[int, int | None]:
    """(prompt token count, max_model_len or None) from a /tokenize answer."""
    if not isinstance(answer, dict):
        raise WireError("the /tokenize answer is not an object")
    count = _count_of(answer.get("count"))
    if count is None and isinstance(answer.get("tokens"), list):
        count = len(answer["tokens"])
    if count is None:
        raise WireError("the /tokenize answer has no token count")
    return count, _count_of(answer.get("max_model_len")) or None


def model_context_limit(answer: Any, upstream_model: str) -> int | None:
    """The `max_model_len` that /v1/models reports for the model (vLLM does), else None.
    WireError when the upstream does not serve that model at all."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        raise WireError("the /v1/models answer has no `data` list")
    served = [item for item in data if isinstance(item, dict)]
    for item in served:
        if item.get("id") == upstream_model:
            return _count_of(item.get("max_model_len")) or None
    names = ", ".join(str(item.get("id")) for item in served) or "none"
    raise WireError(f"the upstream does not serve {upstream_model!r} (it serves: {names})")


def parse_chunk(payload: str) -> Chunk | None:
    """One `data:` payload; None for `[DONE]`. WireError for an error object or bad JSON."""
    if payload == "[DONE]":
        return None
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise WireError(f"a chunk is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WireError("a chunk is not an object")
    if "error" in data:
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise WireError(f"the upstream reported an error: {message}")
    text, finish = "", None
    choices = data.get("choices") or []
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta") or choice.get("message") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        text = content if isinstance(content, str) else ""
        finish = choice.get("finish_reason")
    return Chunk(text=text, finish_reason=finish, usage=_usage(data.get("usage")))


async def data_lines(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream (comments and other fields skipped)."""
    async for line in lines:
        if len(line) > MAX_CHUNK_LINE_BYTES:
            raise WireError("a chunk line is over 1 MB")
        if line.startswith("data:"):
            yield line[5:].strip()


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = _count_of(raw.get("prompt_tokens"))
    completion = _count_of(raw.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def _count_of(value: Any) -> int | None:
    """A token count (a non-negative integer), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
