"""One chat completion through the engine: the OpenAI body turned into a `GenerationRequest`,
then either streamed as Server-Sent Events (`sse_events`) or collected (`collect_completion`).

A client that goes away stops its generation at once: a streamed answer is cancelled by the
HTTP layer when the connection closes (the generator below is interrupted where it waits for
the next token and cancels the engine's request); a collected answer races the generation
against the connection's disconnect message. Each abort is counted and logged."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog

from inference.engine import Engine
from inference.events import Finished, TextDelta
from inference.requests import ChatMessage, GenerationRequest, Role, SamplingParams
from inference.server.errors import FAILED_FINISH, ApiError, bad_request
from inference.server.metrics import EngineServerMetrics
from inference.server.schemas import (
    SSE_DONE,
    ChatCompletionBody,
    ChunkWriter,
    Message,
    completion,
    error_body,
    sse_data,
)
from inference.stream import GenerationStream

log = structlog.get_logger(__name__)

FINISH_REASONS = {"stop": "stop", "length": "length"}
# OpenAI's "developer" role is its newer name for "system".
ROLE_MAP: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
Receive = Callable[[], Awaitable[Any]]


def chat_messages(messages: list[Message]) -> tuple[ChatMessage, ...]:
    """The conversation in the engine's terms; an unknown role is a 400 naming the message."""
    converted = []
    for index, message in enumerate(messages):
        role = ROLE_MAP.get(message.role)
        if role is None:
            raise bad_request(
                f"messages[{index}].role {message.role!r} must be one of {', '.join(ROLE_MAP)}",
                f"messages[{index}].role",
            )
        converted.append(ChatMessage(role=role, content=message.text()))
    return tuple(converted)


def generation_request(body: ChatCompletionBody, request_id: str) -> GenerationRequest:
    """Check what the engine cannot honour (n > 1, logprobs, tools) and build the request;
    sampling fields left out take the engine's defaults (Gemma's recommended ones), as vLLM
    takes the model's generation config. InvalidRequest propagates (a 400)."""
    if body.n not in (None, 1):
        raise bad_request("only n=1 is supported", "n")
    if body.logprobs:
        raise bad_request("logprobs are not supported", "logprobs")
    if body.tools:
        raise bad_request("tools are not supported", "tools")
    if not body.messages:
        raise bad_request("messages must not be empty", "messages")
    defaults = SamplingParams()
    # vLLM writes "top_k off" as -1; the engine as 0.
    top_k = defaults.top_k if body.top_k is None else max(body.top_k, 0)
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    sampling = SamplingParams(
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        top_k=top_k,
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        seed=body.seed,
        stop=stop,
    )
    return GenerationRequest(
        model_id=body.model,
        messages=chat_messages(body.messages),
        sampling=sampling,
        request_id=request_id,
    )


def abort(
    engine: Engine, stream: GenerationStream, metrics: EngineServerMetrics, reason: str, sent: int
) -> None:
    """Stop a generation whose client left (no await: this runs in cancelled code)."""
    request_id = stream.request.request_id
    engine.cancel(request_id)  # the stream usually cancelled itself already; harmless then
    metrics.aborted.labels(reason=reason).inc()
    log.warning(
        "request_aborted",
        request_id=request_id,
        model=stream.request.model_id,
        reason=reason,
        chunks_sent=sent,
    )


def record_finished(metrics: EngineServerMetrics, finished: Finished) -> None:
    metrics.prompt_tokens.inc(finished.prompt_tokens)
    metrics.completion_tokens.inc(finished.completion_tokens)
    metrics.finished.labels(finish_reason=finished.finish_reason).inc()


async def sse_events(
    engine: Engine,
    stream: GenerationStream,
    writer: ChunkWriter,
    metrics: EngineServerMetrics,
) -> AsyncIterator[bytes]:
    """The SSE body: a role chunk, content chunks, a finish chunk, the usage chunk when asked
    for, `[DONE]`. A generation that ends badly (deadline, failure, shutdown) ends the stream
    with an OpenAI error object and then `[DONE]`, as vLLM does."""
    finished: Finished | None = None
    sent = 0
    metrics.running.inc()
    try:
        yield writer.chunk({"role": "assistant", "content": ""})
        async for event in stream:
            if isinstance(event, TextDelta):
                if event.text:
                    sent += 1
                    yield writer.chunk({"content": event.text})
            else:
                finished = event
        assert finished is not None, "a stream ends with Finished"
        record_finished(metrics, finished)
        reason = FINISH_REASONS.get(finished.finish_reason)
        if reason is None:
            _status, code, message = FAILED_FINISH[finished.finish_reason]
            detail = f"{message}: {finished.error}" if finished.error else message
            yield sse_data(error_body(detail, "server_error", finished.error_code or code))
        else:
            yield writer.chunk({}, reason)
            if writer.include_usage:
                yield writer.usage_chunk(finished)
        yield SSE_DONE
    finally:
        metrics.running.dec()
        if finished is None:
            abort(engine, stream, metrics, "client_disconnected", sent)


async def _collect(stream: GenerationStream) -> tuple[str, Finished]:
    parts: list[str] = []
    async for event in stream:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise AssertionError("a stream ends with Finished")


async def _disconnected(receive: Receive) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def collect_completion(
    engine: Engine,
    stream: GenerationStream,
    completion_id: str,
    metrics: EngineServerMetrics,
    receive: Receive,
) -> dict[str, Any]:
    """The whole answer as one `chat.completion`; raises ClientGone (generation cancelled)
    when the client leaves first, ApiError when the generation ends badly."""
    metrics.running.inc()
    generation = asyncio.ensure_future(_collect(stream))
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait({generation, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        metrics.running.dec()
        watcher.cancel()
        if not generation.done():
            generation.cancel()
            abort(engine, stream, metrics, "client_disconnected", 0)
            with contextlib.suppress(asyncio.CancelledError):
                await generation
    if generation not in done:
        raise ClientGone
    text, finished = generation.result()
    record_finished(metrics, finished)
    reason = FINISH_REASONS.get(finished.finish_reason)
    if reason is None:
        status, code, message = FAILED_FINISH[finished.finish_reason]
        detail = f"{message}: {finished.error}" if finished.error else message
        raise ApiError(status, detail, finished.error_code or code, "server_error")
    return completion(completion_id, finished.model_id_answered, text, finished, reason)
