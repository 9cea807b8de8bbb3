"""One request to a remote engine as the engine's stream of events: a pump task reads the
upstream's chunks into a queue (TextDelta..., then one Finished), so that a cancel (Stop, client
disconnect, shutdown) cancels the pump, which closes the upstream connection at once: vLLM and
llama-server abort a request whose connection closes. The final event counts the tokens the
upstream reported (`usage`), or, without usage, those received, counted here.

A failure before any text (every URL refused, timed out, answered 5xx) is raised by the first
iteration, as the local engine raises a refusal; after text it ends the stream with Finished
"error" (or "timeout") and an `error_code` that is also the hold's release reason."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import httpx
import structlog

from inference.errors import (
    EngineBusy,
    InferenceError,
    UpstreamError,
    UpstreamFailed,
    UpstreamTimeout,
)
from inference.events import (
    Finished,
    FinishReason,
    StreamEvent,
    TextDelta,
    Timings,
    TokenCountSource,
)
from inference.remote.wire import (
    FINISH_REASONS,
    Usage,
    WireError,
    chat_body,
    data_lines,
    parse_chunk,
)
from inference.requests import GenerationRequest, PreparedRequest

if TYPE_CHECKING:
    from inference.remote.backend import RemoteBackend
    from inference.remote.upstream import RemoteModel
    from inference.remote.urls import UpstreamUrl

log = structlog.get_logger(__name__)
# How long aclose() waits for the pump to report the final event after a cancel.
_CANCEL_CONFIRM_TIMEOUT_S = 10.0


class RemoteStream:
    """The events of one remote request; same contract as the local `GenerationStream`."""

    def __init__(self, backend: RemoteBackend, model: RemoteModel, prepared: PreparedRequest):
        self._backend = backend
        self._model = model
        self._prepared = prepared
        self.request: GenerationRequest = prepared.request
        self.finished: Finished | None = None
        self._queue: asyncio.Queue[StreamEvent | InferenceError] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._done = False
        self._cancelling = False

    def __aiter__(self) -> RemoteStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._done:
            raise StopAsyncIteration
        if self._pump is None:
            self._start()
        try:
            item = await self._queue.get()
        except BaseException:
            self.cancel()  # the consumer's task was cancelled: stop generating for nobody
            raise
        if isinstance(item, InferenceError):
            self._done = True
            raise item
        if isinstance(item, Finished):
            self._on_finished(item)
        return item

    async def aclose(self) -> None:
        """Cancel if still running and wait (bounded) for the final event."""
        if self._done:
            return
        if self._pump is None:
            self._done = True
            return
        self.cancel()
        try:
            async with asyncio.timeout(_CANCEL_CONFIRM_TIMEOUT_S):
                while not self._done:
                    item = await self._queue.get()
                    if isinstance(item, Finished):
                        self._on_finished(item)
                    elif isinstance(item, InferenceError):
                        self._done = True
        except TimeoutError:
            log.error("remote_cancel_not_confirmed", request_id=self.request.request_id)
            self._done = True

    def cancel(self) -> None:
        """Close the upstream connection now; the stream then ends with Finished 'cancelled'."""
        if self._pump is not None and not self._pump.done() and not self._cancelling:
            self._cancelling = True
            self._pump.cancel()

    def __del__(self) -> None:
        if not self._done and self._pump is not None and not self._pump.done():
            self._pump.cancel()

    def _start(self) -> None:
        self._backend.register(self)
        self._pump = asyncio.get_running_loop().create_task(self._run())

    def _on_finished(self, event: Finished) -> None:
        self.finished = event
        self._done = True

    async def _run(self) -> None:
        try:
            await self._pump_events()
        except Exception as exc:
            # A bug after the stream's own handling: still end it, failed and never billed.
            log.exception("remote_stream_crashed", request_id=self.request.request_id)
            prepared = self._prepared
            self._queue.put_nowait(
                Finished(
                    model_id_answered=prepared.model_id,
                    prompt_tokens=prepared.prompt_tokens,
                    completion_tokens=0,
                    finish_reason="error",
                    error=f"the remote stream failed: {exc!r}",
                    error_code=UpstreamFailed.code,
                    timings=Timings(0.0, None, None, 0.0),
                )
            )
        finally:
            self._backend.unregister(self)

    async def _pump_events(self) -> None:
        prepared, model = self._prepared, self._model
        source = model.source
        submitted = time.monotonic()
        state = _Progress()
        url: UpstreamUrl | None = None
        response: httpx.Response | None = None
        ending: FinishReason = "error"
        error: InferenceError | None = None
        deadline_s = self.request.deadline_s or self._backend.settings.default_deadline_s
        body = chat_body(
            prepared,
            source.model,
            continuous_usage_stats=source.continuous_usage_stats,
            extra=dict(source.extra_body),
        )
        try:
            async with asyncio.timeout(deadline_s):
                url, response = await self._backend.client.open_chat(model, body)
                state.headers_at = time.monotonic()
                async for payload in data_lines(response.aiter_lines()):
                    chunk = parse_chunk(payload)
                    if chunk is None:
                        break
                    if chunk.usage is not None:
                        state.usage = chunk.usage
                    if chunk.text:
                        state.first_token_at = state.first_token_at or time.monotonic()
                        state.parts.append(chunk.text)
                        self._queue.put_nowait(TextDelta(chunk.text))
                    if chunk.finish_reason:
                        state.finish = chunk.finish_reason
            if state.finish is None:
                raise UpstreamFailed(model.id, "the upstream ended the stream without finishing")
            ending = _finish_reason(state.finish)
        except asyncio.CancelledError:
            ending = "cancelled"
            # Stop, disconnect or shutdown: counts are what was received. The cancellation
            # is consumed here, or httpx (anyio) skips closing the connection in the cleanup
            # below, and the upstream would never see the client leave.
            _uncancel_current_task()  # Stop, disconnect or shutdown: counts are what was received
        except TimeoutError:
            ending = "timeout"  # this request's own deadline
        except httpx.TimeoutException as exc:
            error = UpstreamTimeout(model.id, f"no answer within {source.read_timeout_s:g} s")
            if url is not None:
                url.failed(f"timeout: {type(exc).__name__}")
        except (httpx.HTTPError, WireError) as exc:
            error = UpstreamFailed(model.id, f"the stream broke: {_describe(exc)}")
            if url is not None:
                url.failed(_describe(exc))
        except (UpstreamError, EngineBusy) as exc:
            error = exc
        except Exception as exc:  # a bug must still end the stream (and release the hold)
            log.exception("remote_stream_failed", request_id=self.request.request_id)
            error = UpstreamFailed(model.id, f"unexpected: {exc!r}")
        finally:
            if response is not None:
                with contextlib.suppress(Exception):
                    await response.aclose()
            if url is not None:
                url.outstanding -= 1
        if error is not None and not state.parts:
            self._queue.put_nowait(error)  # nothing streamed: the caller answers 503
            return
        await self._finish(ending, error, state, submitted)

    async def _finish(
        self, ending: FinishReason, error: InferenceError | None, state: _Progress, since: float
    ) -> None:
        prepared = self._prepared
        if error is not None:
            ending = "timeout" if isinstance(error, UpstreamTimeout) else "error"
        usage = state.usage
        if usage is not None:
            prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
            source: TokenCountSource = "upstream"
        else:
            prompt_tokens = prepared.prompt_tokens
            completion_tokens = await self._backend.count_completion(self._model, state.parts)
            source = "local"
        # Never more than the upstream was allowed to generate (max_tokens was sent).
        completion_tokens = min(completion_tokens, prepared.max_completion_tokens)
        now = time.monotonic()
        decode_s = now - state.first_token_at if state.first_token_at else 0.0
        self._queue.put_nowait(
            Finished(
                model_id_answered=prepared.model_id,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                finish_reason=ending,
                error=error.message if error is not None else None,
                error_code=error.code if error is not None else None,
                timings=Timings(
                    queue_wait_ms=((state.headers_at or now) - since) * 1000,
                    time_to_first_token_ms=(
                        (state.first_token_at - since) * 1000 if state.first_token_at else None
                    ),
                    decode_tokens_per_s=(
                        (completion_tokens - 1) / decode_s
                        if decode_s > 0 and completion_tokens > 1
                        else None
                    ),
                    total_ms=(now - since) * 1000,
                ),
                token_count_source=source,
            )
        )


class _Progress:
    """What one request has received so far."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.usage: Usage | None = None
        self.finish: str | None = None
        self.headers_at: float | None = None
        self.first_token_at: float | None = None


def _uncancel_current_task() -> None:
    task = asyncio.current_task()
    while task is not None and task.cancelling():
        task.uncancel()


def _finish_reason(upstream: str) -> FinishReason:
    return FINISH_REASONS.get(upstream, "stop")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
