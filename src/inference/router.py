"""The one interface through which the web layer reaches inference (`InferenceBackend`), and the
router that implements it over a catalog: `local` entries go to the in-process `Engine`, `remote`
entries to the `RemoteBackend` (an OpenAI-compatible server), picked per model by its source
kind. Both kinds prepare a request once (exact prompt count, worst-case completion), stream
TextDelta... then one Finished with exact counts, and cancel by request id."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from inference.catalog import Catalog
from inference.engine import Engine, SchedulerLoad
from inference.errors import InvalidRequest
from inference.events import Finished, ModelStatus, StreamEvent
from inference.loading import LoadedModel
from inference.progress import LoadingState
from inference.remote.backend import RemoteBackend
from inference.remote.upstream import UrlHealth
from inference.requests import GenerationRequest, PreparedRequest
from inference.settings import InferenceSettings


class EventStream(Protocol):
    """One request's events; `aclose()` stops it and leaves the final event in `finished`."""

    @property
    def finished(self) -> Finished | None: ...

    def __aiter__(self) -> AsyncIterator[StreamEvent]: ...

    async def __anext__(self) -> StreamEvent: ...

    async def aclose(self) -> None: ...


class InferenceBackend(Protocol):
    """What the web layer needs of inference, whoever runs the model."""

    @property
    def catalog(self) -> Catalog: ...

    @property
    def settings(self) -> InferenceSettings: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def models(self) -> list[ModelStatus]: ...

    async def prepare(self, request: GenerationRequest) -> PreparedRequest: ...

    def stream(self, request: GenerationRequest | PreparedRequest) -> EventStream: ...

    def cancel(self, request_id: str) -> bool: ...

    def loading_for_s(self, model_id: str) -> float | None: ...

    def loading_state(self, model_id: str) -> LoadingState | None: ...


class InferenceRouter:
    """Every model of a catalog, each served by the backend its source kind names. `local`
    may be injected (tests share one loaded engine); it then serves the local entries."""

    def __init__(
        self,
        catalog: Catalog,
        settings: InferenceSettings,
        environ: Mapping[str, str] | None = None,
        *,
        local: Engine | None = None,
    ) -> None:
        self._catalog = catalog
        self._settings = settings
        local_entries = tuple(entry for entry in catalog if not entry.source.is_remote)
        remote_entries = [entry for entry in catalog if entry.source.is_remote]
        self.local = local if local is not None else Engine(Catalog(local_entries), settings)
        # ValueError (an API key variable that is not set) stops the start with its message.
        self.remote = RemoteBackend(remote_entries, settings, environ or {})

    @classmethod
    def around(cls, engine: Engine) -> InferenceRouter:
        """A router over an existing engine (its catalog, no remote models)."""
        return cls(engine.catalog, engine.settings, local=engine)

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def settings(self) -> InferenceSettings:
        return self._settings

    def is_remote(self, model_id: str) -> bool:
        return model_id in self.remote

    async def start(self) -> None:
        await self.local.start()
        await self.remote.start()

    async def close(self) -> None:
        await self.remote.close()
        await self.local.close()

    async def close_remote(self) -> None:
        """Close only the remote backend (an injected engine is closed by its owner)."""
        await self.remote.close()

    def models(self) -> list[ModelStatus]:
        by_id = {status.id: status for status in self.local.models()}
        by_id.update({status.id: status for status in self.remote.models()})
        return [by_id[entry.id] for entry in self._catalog if entry.id in by_id]

    async def load(self, model_id: str) -> Any:
        """Load a local model (its LoadedModel) or check that a remote one answers."""
        if self.is_remote(model_id):
            return await self.remote.load(model_id)
        return await self.local.load(model_id)

    def loaded_model(self, model_id: str) -> LoadedModel | None:
        return None if self.is_remote(model_id) else self.local.loaded_model(model_id)

    def loading_for_s(self, model_id: str) -> float | None:
        """Seconds a local model's load has been in flight; None for a remote model (its
        upstream loads its own weights) and for a model not loading."""
        return None if self.is_remote(model_id) else self.local.loading_for_s(model_id)

    def loading_state(self, model_id: str) -> LoadingState | None:
        """How far a local model's load in flight has come; None for a remote model and for a
        model not loading."""
        return None if self.is_remote(model_id) else self.local.loading_state(model_id)

    def load_snapshot(self, model_id: str) -> SchedulerLoad:
        if self.is_remote(model_id):
            return self.remote.load_snapshot(model_id)
        return self.local.load_snapshot(model_id)

    async def prepare(self, request: GenerationRequest) -> PreparedRequest:
        if not isinstance(request, GenerationRequest):
            raise InvalidRequest("expected a GenerationRequest")
        if self.is_remote(request.model_id):
            return await self.remote.prepare(request)
        return await self.local.prepare(request)

    def stream(self, request: GenerationRequest | PreparedRequest) -> EventStream:
        model_id = request.model_id
        if self.is_remote(model_id):
            return self.remote.stream(request)
        return self.local.stream(request)

    def cancel(self, request_id: str) -> bool:
        return self.remote.cancel(request_id) or self.local.cancel(request_id)

    async def remote_health(self) -> list[UrlHealth]:
        """Reachability and latency of every URL of every remote model, probed now."""
        return await self.remote.health()
