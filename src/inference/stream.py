"""One request's stream of events: submitted to its model's scheduler on the first iteration
(prepared then, unless `Engine.prepare` already did), cancelled when the consumer leaves.
Owned by the engine (it reserves request ids in the engine's table of active streams)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog

from inference.errors import InvalidRequest, ModelUnavailable
from inference.events import Finished, StreamEvent
from inference.requests import GenerationRequest, PreparedRequest
from inference.scheduler import ModelScheduler
from inference.slots import Slot

if TYPE_CHECKING:
    from inference.engine import Engine

log = structlog.get_logger(__name__)

# How long aclose() of a stream waits for the scheduler to confirm the cancellation.
_CANCEL_CONFIRM_TIMEOUT_S = 30.0


class GenerationStream(AsyncIterator[StreamEvent]):
    """The events of one request. Leaving it early (break, task cancellation, aclose()) stops
    the request within one decode step; after `await aclose()`, `finished` holds the final
    event with the exact token counts."""

    def __init__(
        self, engine: Engine, request: GenerationRequest, prepared: PreparedRequest | None = None
    ) -> None:
        self._engine = engine
        self.request = request
        self._prepared = prepared
        self.finished: Finished | None = None
        self._started_at = time.monotonic()
        self._events: asyncio.Queue[StreamEvent] | None = None
        self._slot: Slot | None = None
        self._scheduler: ModelScheduler | None = None
        self._done = False
        # Set by a cancel before the request reached its scheduler (loading, tokenizing).
        self._cancel_pending = False
        self._registered = False

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._done:
            raise StopAsyncIteration
        if self._events is None:
            await self.start()
        assert self._events is not None
        try:
            event = await self._events.get()
        except BaseException:
            # The consuming task was cancelled: stop generating for nobody.
            self._request_cancel()
            raise
        if isinstance(event, Finished):
            self._on_finished(event)
        return event

    async def start(self) -> None:
        """Submit the request now without waiting for its first event, so that what stops it
        before generation (EngineBusy, ModelUnavailable, ...) is raised here, e.g. before an
        HTTP server sends its response headers. Iterating without start() submits too."""
        if self._events is not None or self._done:
            return
        try:
            await self._submit()
        except BaseException:
            self._done = True
            raise

    async def aclose(self) -> None:
        """Cancel if still running and wait (bounded) for the final event."""
        if self._done:
            return
        if self._events is None:
            self._done = True
            return
        self._request_cancel()
        try:
            async with asyncio.timeout(_CANCEL_CONFIRM_TIMEOUT_S):
                while not self._done:
                    event = await self._events.get()
                    if isinstance(event, Finished):
                        self._on_finished(event)
        except TimeoutError:
            log.error("cancel_not_confirmed", request_id=self.request.request_id)
            self._done = True

    def __del__(self) -> None:
        # `break` out of `async for` drops the stream without aclose(); stop its generation.
        if not self._done:
            self._request_cancel()

    async def _submit(self) -> None:
        engine = self._engine
        request = self.request
        if request.request_id in engine._active:
            raise InvalidRequest(f"request_id {request.request_id!r} is already running")
        # Reserved before the first await: a concurrent stream with the same id is refused,
        # and engine.cancel() reaches this request while it is still being prepared.
        engine._active[request.request_id] = self
        self._registered = True
        try:
            await self._prepare_and_submit()
        except BaseException:
            self._unregister()
            raise

    async def _prepare_and_submit(self) -> None:
        engine = self._engine
        request = self.request
        prepared = self._prepared or await engine.prepare(request)
        scheduler = engine._states[prepared.model_id].scheduler
        if scheduler is None:
            raise ModelUnavailable(request.model_id, "the engine is closed")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StreamEvent] = asyncio.Queue()

        def deliver(event: StreamEvent) -> None:
            # A closed loop raises RuntimeError: nobody is left to read the event.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(events.put_nowait, event)

        deadline_s = request.deadline_s or engine.settings.default_deadline_s
        slot = Slot(
            request_id=request.request_id,
            prompt_ids=list(prepared.prompt_ids),
            max_new_tokens=prepared.max_completion_tokens,
            sampling=request.sampling,
            submitted_at=self._started_at,
            deadline_at=self._started_at + deadline_s,
            deliver=deliver,
            model_id_answered=prepared.model_id,
            fell_back_from=prepared.fell_back_from,
            # Cancelled while being prepared: the scheduler ends it without running it.
            cancel_requested=self._cancel_pending,
        )
        scheduler.submit(slot)  # raises EngineBusy at once when the queue is full
        self._events, self._slot, self._scheduler = events, slot, scheduler

    def _request_cancel(self) -> None:
        """The consumer left: stop generating and free the request id."""
        self._cancel_generation()
        if self._slot is not None:
            self._unregister()

    def _cancel_generation(self) -> None:
        """Stop generating; the id stays reserved until the stream's Finished."""
        self._cancel_pending = True
        if self._slot is not None and self._scheduler is not None and not self._slot.finished:
            self._scheduler.cancel(self._slot)

    def _unregister(self) -> None:
        """Free the request id, unless another stream holds it now."""
        if self._registered and self._engine._active.get(self.request.request_id) is self:
            del self._engine._active[self.request.request_id]
        self._registered = False

    def _on_finished(self, event: Finished) -> None:
        self.finished = event
        self._done = True
        self._unregister()
