"""The backend of every `remote` catalog entry: prepare a request (exact prompt count from the
upstream's /tokenize, else the entry's tokenizer; context limit from its /v1/models), open its
stream on the best URL (failing over to the next one only before anything was received), count
tokens when the upstream sends no usage, and probe each URL for /ready and `models list`.

Several upstreams of one model are expected to serve the same weights (replicas)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from inference.catalog import CatalogEntry
from inference.engine import SchedulerLoad
from inference.errors import InvalidRequest, ModelUnavailable, PromptTooLong
from inference.events import ModelStatus
from inference.remote.stream import RemoteStream
from inference.remote.upstream import (
    RemoteModel,
    UpstreamClient,
    UrlHealth,
    auth_headers,
)
from inference.remote.urls import UrlPool
from inference.requests import GenerationRequest, PreparedRequest, check_request_limits
from inference.settings import InferenceSettings
from inference.text import TokenizerAdapter, encode_prompt

log = structlog.get_logger(__name__)
# A model whose upstream answered this recently is not probed again before a request.
REACHABLE_FOR_S = 10.0


class RemoteBackend:
    """Serves the `remote` entries of a catalog over one pooled HTTP client."""

    def __init__(
        self,
        entries: Sequence[CatalogEntry],
        settings: InferenceSettings,
        environ: Mapping[str, str],
    ) -> None:
        self.settings = settings
        self._models: dict[str, RemoteModel] = {}
        for entry in entries:
            source = entry.source.remote
            assert source is not None
            self._models[entry.id] = RemoteModel(
                entry=entry,
                source=source,
                pool=UrlPool(source.base_urls, source.max_concurrent_per_url),
                headers=auth_headers(entry.id, source, environ),
            )
        self._active: dict[str, RemoteStream] = {}
        self.client = UpstreamClient()

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    async def start(self) -> None:
        """Probes the models marked load_at_start; an unreachable one is logged, not fatal."""
        for model in self._models.values():
            if model.entry.load_at_start:
                try:
                    await self.load(model.id)
                except ModelUnavailable as exc:
                    log.warning("remote_model_unreachable_at_start", model=model.id, error=str(exc))

    async def close(self) -> None:
        for stream in list(self._active.values()):
            stream.cancel()
        await self.client.aclose()

    # -- the engine interface -------------------------------------------------------------
    def models(self) -> list[ModelStatus]:
        statuses = []
        for model in self._models.values():
            errors = [url.last_error for url in model.pool.urls if url.last_error]
            now = time.monotonic()
            down = all(url.backing_off(now) for url in model.pool.urls)
            statuses.append(
                ModelStatus(
                    id=model.id,
                    display_name=model.entry.display_name,
                    available=not down,
                    unavailable_reason="; ".join(errors) if down else None,
                    how_to_provide=(
                        f"start the upstream at {', '.join(model.source.base_urls)}"
                        if down
                        else None
                    ),
                    quantization=model.entry.quantization,
                    loaded=model.reachable_at is not None and not down,
                    memory_bytes=None,
                    fallback_model_id=model.entry.fallback_model_id,
                    context_limit_tokens=model.context_limit() or 0,
                    max_new_tokens_cap=model.entry.max_new_tokens_cap,
                    fallback_on_v1=model.entry.fallback_on_v1,
                )
            )
        return statuses

    async def load(self, model_id: str) -> RemoteModel:
        """Checks that the upstream serves the model (GET /v1/models), learning its context
        limit; raises UpstreamUnavailable when no URL answers."""
        model = self._model(model_id)
        await self.client.probe_models(model)
        return model

    def load_snapshot(self, model_id: str) -> SchedulerLoad:
        return SchedulerLoad(waiting=0, running=self._model(model_id).pool.outstanding)

    async def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """The exact prompt count (upstream /tokenize, else the entry's tokenizer) and the
        worst-case completion, as the local engine's prepare. Contacts the upstream, so an
        upstream that is down is refused here (UpstreamUnavailable), before any hold."""
        check_request_limits(request, self.settings)
        model = self._model(request.model_id)
        prompt_ids: tuple[int, ...] = ()
        prompt_count = await self.client.prompt_count(model, request)
        if prompt_count is None:
            tokenizer = await self._tokenizer(model)
            if tokenizer is None:
                raise ModelUnavailable(
                    model.id,
                    "its prompt cannot be counted: the upstream has no /tokenize and the "
                    "catalog entry names no tokenizer_path",
                )
            prompt_ids = tuple(encode_prompt(tokenizer, request.messages, model.entry.prompting))
            prompt_count = len(prompt_ids)
        if model.reachable_at is None or time.monotonic() - model.reachable_at > REACHABLE_FOR_S:
            await self.client.probe_models(model)
        context_limit = model.context_limit()
        if context_limit is None:
            raise ModelUnavailable(
                model.id, "its context limit is unknown: set context_limit_tokens in the catalog"
            )
        if prompt_count >= context_limit:
            raise PromptTooLong(prompt_count, context_limit)
        entry = model.entry
        default_reply = entry.prompting.default_max_new_tokens
        wanted = request.sampling.max_new_tokens or default_reply or entry.max_new_tokens_cap
        max_new_tokens = min(wanted, entry.max_new_tokens_cap, context_limit - prompt_count)
        self._warm_tokenizer(model)
        return PreparedRequest(
            request=request,
            prompt_ids=prompt_ids,
            max_completion_tokens=max_new_tokens,
            model_id=model.id,
            prompt_token_count=prompt_count,
        )

    def stream(self, request: GenerationRequest | PreparedRequest) -> RemoteStream:
        if not isinstance(request, PreparedRequest):
            raise InvalidRequest("a remote model streams a prepared request (prepare() first)")
        return RemoteStream(self, self._model(request.model_id), request)

    def cancel(self, request_id: str) -> bool:
        stream = self._active.get(request_id)
        if stream is None:
            return False
        stream.cancel()
        return True

    # -- used by RemoteStream -------------------------------------------------------------
    def register(self, stream: RemoteStream) -> None:
        request_id = stream.request.request_id
        if request_id in self._active:
            raise InvalidRequest(f"request_id {request_id!r} is already running")
        self._active[request_id] = stream

    def unregister(self, stream: RemoteStream) -> None:
        if self._active.get(stream.request.request_id) is stream:
            del self._active[stream.request.request_id]

    async def count_completion(self, model: RemoteModel, parts: Sequence[str]) -> int:
        """Tokens received without a usage count: the entry's tokenizer on the text, else
        the chunks that carried text (each at least one token, so never over-counted)."""
        try:
            tokenizer = await self._tokenizer(model)
        except ModelUnavailable as exc:  # a broken tokenizer_path must not lose the count
            log.warning("remote_count_by_chunks", model=model.id, error=str(exc))
            tokenizer = None
        if tokenizer is None:
            return len(parts)
        return len(tokenizer.encode_content("".join(parts)))

    # -- probes ----------------------------------------------------------------------------
    async def health(self) -> list[UrlHealth]:
        """Every URL of every remote model, probed now (GET /v1/models), concurrently."""
        checks = [
            self.client.probe_url(model, url)
            for model in self._models.values()
            for url in model.pool.urls
        ]
        return list(await asyncio.gather(*checks))

    async def _tokenizer(self, model: RemoteModel) -> TokenizerAdapter | None:
        path = model.source.tokenizer_path
        if path is None:
            return None
        async with model.tokenizer_lock:
            if model.tokenizer is None:
                model.tokenizer = await asyncio.to_thread(_load_tokenizer, model.id, path)
        return model.tokenizer

    def _warm_tokenizer(self, model: RemoteModel) -> None:
        """Load the entry's tokenizer in the background, so that counting a reply the upstream
        sent no usage for (a Stop) does not wait for a load (a GGUF tokenizer takes seconds)."""
        if model.source.tokenizer_path is None or model.tokenizer is not None:
            return
        if model.tokenizer_warmup is None:
            model.tokenizer_warmup = asyncio.create_task(self._tokenizer(model))
            model.tokenizer_warmup.add_done_callback(_log_warmup_failure)

    def _model(self, model_id: str) -> RemoteModel:
        try:
            return self._models[model_id]
        except KeyError:
            raise ModelUnavailable(model_id, "not a remote model of this catalog") from None


def _log_warmup_failure(task: asyncio.Task[TokenizerAdapter | None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("remote_tokenizer_not_loaded", error=str(task.exception()))


def _load_tokenizer(model_id: str, path: Path) -> TokenizerAdapter:
    from transformers import AutoTokenizer

    try:
        if path.suffix == ".gguf":
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(
            model_id, f"its tokenizer_path {path} cannot be loaded: {exc}"
        ) from None
    return TokenizerAdapter(tokenizer)
