"""The engine: the catalog's models, loaded lazily (once, under a per-model lock) or at start,
each served by its own scheduler thread; requests validated, estimated and streamed.

A model that cannot be loaded (missing weights, load error, out of memory) is answered by its
fallback model when the catalog names one; the final event then says which model answered."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from inference.catalog import Catalog, CatalogEntry
from inference.errors import (
    InferenceError,
    InvalidRequest,
    ModelLoadFailed,
    ModelUnavailable,
    OutOfMemory,
    PromptTooLong,
)
from inference.events import Finished, ModelStatus, StreamEvent
from inference.loading import LoadedModel, free_memory, load_model
from inference.requests import GenerationRequest, TokenEstimate
from inference.scheduler import ModelScheduler, Slot
from inference.settings import InferenceSettings
from inference.sources import check_availability
from inference.text import encode_prompt

log = structlog.get_logger(__name__)

# How long close() waits for a scheduler thread to finish its current step.
_SCHEDULER_JOIN_TIMEOUT_S = 30.0
# How long aclose() of a stream waits for the scheduler to confirm the cancellation.
_CANCEL_CONFIRM_TIMEOUT_S = 30.0


class _ModelState:
    def __init__(self, entry: CatalogEntry) -> None:
        self.entry = entry
        # The one load in flight; every caller awaits it shielded, so a caller that is
        # cancelled neither stops it nor lets a second load of the same model start.
        self.load_task: asyncio.Task[LoadedModel] | None = None
        self.loaded: LoadedModel | None = None
        self.scheduler: ModelScheduler | None = None
        self.load_error: InferenceError | None = None


@dataclass(frozen=True)
class SchedulerLoad:
    """A snapshot of one model's scheduler, for metrics and tests."""

    waiting: int
    running: int


@dataclass(frozen=True)
class _Prepared:
    state: _ModelState
    prompt_ids: list[int]
    max_new_tokens: int
    fell_back_from: str | None


class Engine:
    """Serves the models of one catalog. Create it, `await start()`, then `stream()`."""

    def __init__(self, catalog: Catalog, settings: InferenceSettings | None = None) -> None:
        self.catalog = catalog
        self.settings = settings if settings is not None else InferenceSettings.from_env()
        self._states = {entry.id: _ModelState(entry) for entry in catalog}
        # Request ids reserved from a stream's first iteration until its end.
        self._active: dict[str, GenerationStream] = {}
        self._closed = False

    async def start(self) -> None:
        """Loads the models marked load_at_start, off the event loop. A model that fails is
        logged and reported by models(); the engine still starts."""
        for entry in self.catalog:
            if entry.load_at_start:
                try:
                    await self._ensure_loaded(self._states[entry.id])
                except InferenceError as exc:
                    log.warning("model_not_loaded_at_start", model=entry.id, error=str(exc))

    async def close(self) -> None:
        """Stops every scheduler; streams still running end with finish_reason 'cancelled'."""
        self._closed = True
        loads = [state.load_task for state in self._states.values() if state.load_task]
        if loads:
            # A load in flight sees `_closed` when it returns and drops what it loaded.
            await asyncio.wait(loads, timeout=_SCHEDULER_JOIN_TIMEOUT_S)
        schedulers = [state.scheduler for state in self._states.values() if state.scheduler]
        for scheduler in schedulers:
            scheduler.stop()
        for scheduler in schedulers:
            await asyncio.to_thread(scheduler.join, _SCHEDULER_JOIN_TIMEOUT_S)
        for state in self._states.values():
            state.scheduler = None
            state.loaded = None
        free_memory()

    def models(self) -> list[ModelStatus]:
        statuses = []
        for state in self._states.values():
            entry = state.entry
            self._drop_if_crashed(state)
            if state.loaded is not None:
                available, reason, how = True, None, None
            elif state.load_error is not None:
                available, reason = False, state.load_error.message
                how = getattr(state.load_error, "how_to_provide", None)
            else:
                availability = check_availability(entry, self.settings)
                available = availability.available
                reason, how = availability.reason, availability.how_to_provide
            statuses.append(
                ModelStatus(
                    id=entry.id,
                    display_name=entry.display_name,
                    available=available,
                    unavailable_reason=reason,
                    how_to_provide=how,
                    quantization=entry.quantization,
                    price=entry.price,
                    loaded=state.loaded is not None,
                    memory_bytes=state.loaded.memory_bytes if state.loaded else None,
                    fallback_model_id=entry.fallback_model_id,
                    context_limit_tokens=entry.context_limit_tokens,
                    max_new_tokens_cap=entry.max_new_tokens_cap,
                )
            )
        return statuses

    def load_snapshot(self, model_id: str) -> SchedulerLoad:
        """Requests waiting and running for a model now (zero when it is not loaded)."""
        scheduler = self._state(model_id).scheduler
        if scheduler is None:
            return SchedulerLoad(waiting=0, running=0)
        return SchedulerLoad(waiting=scheduler.waiting_count, running=scheduler.running_count)

    def loaded_model(self, model_id: str) -> LoadedModel | None:
        """The loaded model, for benchmarks and diagnostics."""
        state = self._states.get(model_id)
        return state.loaded if state is not None else None

    async def load(self, model_id: str) -> LoadedModel:
        """Loads a model now (no fallback); raises what loading raised."""
        return await self._ensure_loaded(self._state(model_id))

    async def estimate(self, request: GenerationRequest) -> TokenEstimate:
        """Worst-case token counts (async: it needs the tokenizer, so it loads the model that
        would answer, falling back as stream() would). Raises InvalidRequest, PromptTooLong,
        ModelUnavailable."""
        prepared = await self._prepare(request)
        return TokenEstimate(
            prompt_tokens=len(prepared.prompt_ids),
            max_completion_tokens=prepared.max_new_tokens,
            model_id=prepared.state.entry.id,
        )

    def stream(self, request: GenerationRequest) -> GenerationStream:
        """Events of one request: TextDelta..., then exactly one Finished. Errors found before
        generation starts (InvalidRequest, PromptTooLong, ModelUnavailable, EngineBusy, ...)
        are raised by the first iteration."""
        return GenerationStream(self, request)

    def cancel(self, request_id: str) -> bool:
        """Ends a running request (its stream then yields Finished 'cancelled'). False when no
        such request is running."""
        stream = self._active.get(request_id)
        if stream is None:
            return False
        stream._cancel_generation()
        return True

    def _state(self, model_id: str) -> _ModelState:
        self.catalog.get(model_id)  # raises ModelUnavailable naming the known ids
        return self._states[model_id]

    async def _ensure_loaded(self, state: _ModelState) -> LoadedModel:
        if self._closed:
            raise ModelUnavailable(state.entry.id, "the engine is closed")
        self._drop_if_crashed(state)
        if state.loaded is not None:
            return state.loaded
        if isinstance(state.load_error, (ModelLoadFailed, OutOfMemory)):
            # Loading is expensive; a model that failed stays failed until restart.
            raise state.load_error
        if state.load_task is None:
            state.load_task = asyncio.create_task(self._load(state))
            state.load_task.add_done_callback(_retrieve_exception)
        return await asyncio.shield(state.load_task)

    async def _load(self, state: _ModelState) -> LoadedModel:
        """The one load of a model (a task of its own, see `_ModelState.load_task`)."""
        try:
            try:
                loaded = await asyncio.to_thread(load_model, state.entry, self.settings)
            except ModelUnavailable:
                raise  # weights missing: checked again next time, they may be provided
            except InferenceError as exc:
                state.load_error = exc
                raise
            if self._closed:
                # close() ran during the load: starting a scheduler now would leak its thread.
                del loaded
                free_memory()
                raise ModelUnavailable(state.entry.id, "the engine is closed")
            scheduler = ModelScheduler(
                loaded,
                self.settings.queue_limit,
                self.settings.max_batch_size,
                self.settings.prefix_cache_bytes,
            )
            scheduler.start()
            state.scheduler = scheduler
            state.loaded = loaded
            state.load_error = None
            return loaded
        finally:
            state.load_task = None

    def _drop_if_crashed(self, state: _ModelState) -> None:
        """Forget a model whose scheduler thread died, so the next request loads it again
        (or falls back) instead of meeting a scheduler that accepts nothing."""
        if state.scheduler is not None and state.scheduler.crashed:
            log.error("model_dropped_after_crash", model=state.entry.id)
            state.scheduler = None
            state.loaded = None
            free_memory()

    async def _resolve(self, model_id: str) -> tuple[_ModelState, str | None]:
        """The state of the model that will answer, following fallbacks (each at most once)."""
        state = self._state(model_id)
        tried: list[str] = []
        first_error: InferenceError | None = None
        while True:
            try:
                await self._ensure_loaded(state)
                return state, (model_id if tried else None)
            except (ModelUnavailable, ModelLoadFailed, OutOfMemory) as exc:
                first_error = first_error or exc
                tried.append(state.entry.id)
                fallback = state.entry.fallback_model_id
                if self._closed or fallback is None or fallback in tried:
                    raise first_error from None
                log.warning(
                    "model_fallback", model=state.entry.id, fallback=fallback, error=str(exc)
                )
                state = self._states[fallback]

    async def _prepare(self, request: GenerationRequest) -> _Prepared:
        if not isinstance(request, GenerationRequest):
            raise InvalidRequest("expected a GenerationRequest")
        limits = self.settings
        if len(request.messages) > limits.max_prompt_messages:
            raise InvalidRequest(f"at most {limits.max_prompt_messages} messages per request")
        for message in request.messages:
            if len(message.content) > limits.max_message_chars:
                raise InvalidRequest(
                    f"a message has {len(message.content)} characters; at most "
                    f"{limits.max_message_chars} are allowed"
                )
        state, fell_back_from = await self._resolve(request.model_id)
        loaded = state.loaded
        assert loaded is not None
        prompt_ids = encode_prompt(loaded.tokenizer, request.messages, state.entry.prompting)
        context_limit = state.entry.context_limit_tokens
        if len(prompt_ids) >= context_limit:
            raise PromptTooLong(len(prompt_ids), context_limit)
        default_reply = state.entry.prompting.default_max_new_tokens
        wanted = request.sampling.max_new_tokens or default_reply or state.entry.max_new_tokens_cap
        room = context_limit - len(prompt_ids)
        max_new_tokens = min(wanted, state.entry.max_new_tokens_cap, room)
        return _Prepared(state, prompt_ids, max_new_tokens, fell_back_from)


class GenerationStream(AsyncIterator[StreamEvent]):
    """The events of one request. Leaving it early (break, task cancellation, aclose()) stops
    the request within one decode step; after `await aclose()`, `finished` holds the final
    event with the exact token counts."""

    def __init__(self, engine: Engine, request: GenerationRequest) -> None:
        self._engine = engine
        self.request = request
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
            try:
                await self._submit()
            except BaseException:
                self._done = True
                raise
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
        prepared = await engine._prepare(request)
        scheduler = prepared.state.scheduler
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
            prompt_ids=prepared.prompt_ids,
            max_new_tokens=prepared.max_new_tokens,
            sampling=request.sampling,
            submitted_at=self._started_at,
            deadline_at=self._started_at + deadline_s,
            deliver=deliver,
            model_id_answered=prepared.state.entry.id,
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


def _retrieve_exception(task: asyncio.Task[LoadedModel]) -> None:
    """A load whose callers were all cancelled must not log 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()
