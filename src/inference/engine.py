"""The engine: the catalog's models, loaded lazily (once, under a per-model lock) or at start,
each served by its own scheduler thread; requests validated and tokenized once (`prepare`),
then streamed (`GenerationStream`, in `stream.py`).

A model that cannot be loaded (missing weights, load error, out of memory) is answered by its
fallback model when the catalog names one; the final event then says which model answered."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from inference.catalog import Catalog, CatalogEntry
from inference.errors import (
    InferenceError,
    ModelLoadFailed,
    ModelUnavailable,
    OutOfMemory,
    PromptTooLong,
)
from inference.events import ModelStatus
from inference.loading import LoadedModel, free_memory, load_model
from inference.progress import LoadingState, LoadProgress
from inference.requests import GenerationRequest, PreparedRequest, check_request_limits
from inference.scheduler import ModelScheduler
from inference.settings import InferenceSettings
from inference.sources import check_availability
from inference.stream import GenerationStream
from inference.text import encode_prompt
from inference.threads import governor_for

log = structlog.get_logger(__name__)

# How long close() waits for a scheduler thread to finish its current step.
_SCHEDULER_JOIN_TIMEOUT_S = 30.0


class _ModelState:
    def __init__(self, entry: CatalogEntry) -> None:
        self.entry = entry
        # The one load in flight; every caller awaits it shielded, so a caller that is
        # cancelled neither stops it nor lets a second load of the same model start.
        self.load_task: asyncio.Task[LoadedModel] | None = None
        self.load_started_at: float | None = None  # time.monotonic() when load_task began
        self.load_progress: LoadProgress | None = None  # while load_task runs
        self.loaded: LoadedModel | None = None
        self.scheduler: ModelScheduler | None = None
        self.load_error: InferenceError | None = None


@dataclass(frozen=True)
class SchedulerLoad:
    """A snapshot of one model's scheduler, for metrics and tests."""

    waiting: int
    running: int


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
            loading = state.load_progress.state() if state.load_progress else None
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
                    loaded=state.loaded is not None,
                    memory_bytes=state.loaded.memory_bytes if state.loaded else None,
                    fallback_model_id=entry.fallback_model_id,
                    context_limit_tokens=entry.context_limit_tokens,
                    max_new_tokens_cap=entry.max_new_tokens_cap,
                    fallback_on_v1=entry.fallback_on_v1,
                    loading_percent=None if loading is None else loading.percent,
                    loading_stage=None if loading is None else loading.label,
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

    def loading_for_s(self, model_id: str) -> float | None:
        """Seconds since the load in flight of this model began; None when none is (it is
        loaded, failed, or has not been asked for). Lets a caller refuse instead of waiting."""
        state = self._state(model_id)
        if state.load_task is None or state.load_started_at is None:
            return None
        return time.monotonic() - state.load_started_at

    def loading_state(self, model_id: str) -> LoadingState | None:
        """How far the load in flight of this model has come (its preparation included);
        None when no load is in flight."""
        progress = self._state(model_id).load_progress
        return None if progress is None else progress.state()

    async def load(self, model_id: str) -> LoadedModel:
        """Loads a model now (no fallback); raises what loading raised."""
        return await self._ensure_loaded(self._state(model_id))

    async def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Check and tokenize a request once (async: it needs the tokenizer, so it loads the
        model that would answer, falling back as stream() would). The result carries the exact
        prompt token count and the worst-case completion; pass it to stream(). Raises
        InvalidRequest, PromptTooLong, ModelUnavailable."""
        check_request_limits(request, self.settings)
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
        return PreparedRequest(
            request=request,
            prompt_ids=tuple(prompt_ids),
            max_completion_tokens=max_new_tokens,
            model_id=state.entry.id,
            fell_back_from=fell_back_from,
        )

    def stream(self, request: GenerationRequest | PreparedRequest) -> GenerationStream:
        """Events of one request: TextDelta..., then exactly one Finished. A plain request is
        prepared by the first iteration; a prepared one (from prepare()) is not tokenized
        again. Errors found before generation starts (InvalidRequest, PromptTooLong,
        ModelUnavailable, EngineBusy, ...) are raised by the first iteration."""
        if isinstance(request, PreparedRequest):
            return GenerationStream(self, request.request, request)
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
            state.load_started_at = time.monotonic()
            state.load_progress = LoadProgress()
            state.load_task = asyncio.create_task(self._load(state))
            state.load_task.add_done_callback(_retrieve_exception)
        return await asyncio.shield(state.load_task)

    async def _load(self, state: _ModelState) -> LoadedModel:
        """The one load of a model (a task of its own, see `_ModelState.load_task`)."""
        try:
            try:
                loaded = await asyncio.to_thread(
                    load_model, state.entry, self.settings, progress=state.load_progress
                )
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
                self.settings.prefill_chunk_tokens,
                governor_for(loaded.device.type, self.settings.torch_threads, loaded.memory_bytes),
            )
            scheduler.start()
            state.scheduler = scheduler
            state.loaded = loaded
            state.load_error = None
            return loaded
        finally:
            state.load_task = None
            state.load_started_at = None
            state.load_progress = None

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


def _retrieve_exception(task: asyncio.Task[LoadedModel]) -> None:
    """A load whose callers were all cancelled must not log 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()
