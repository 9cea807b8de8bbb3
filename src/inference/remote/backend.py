"""The backend of every `remote` catalog entry: prepare a request (exact prompt count from the
upstream's /tokenize, else the entry's tokenizer; context limit from its /v1/models), open its
stream on the best URL (failing over to the next one only before anything was received), count
tokens when the upstream sends no usage, and probe each URL for /ready and `models list`.

Several upstreams of one model are expected to serve the same weights (replicas)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from inference.catalog import CatalogEntry
from inference.engine import SchedulerLoad
from inference.errors import (
    EngineBusy,
    InvalidRequest,
    ModelUnavailable,
    PromptTooLong,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from inference.events import ModelStatus
from inference.remote.source import RemoteSource
from inference.remote.stream import RemoteStream
from inference.remote.urls import UpstreamUrl, UrlPool
from inference.remote.wire import (
    WireError,
    model_context_limit,
    tokenize_body,
    tokenize_count,
)
from inference.requests import GenerationRequest, PreparedRequest
from inference.settings import InferenceSettings
from inference.text import TokenizerAdapter, encode_prompt

log = structlog.get_logger(__name__)
# A model whose upstream answered this recently is not probed again before a request.
REACHABLE_FOR_S = 10.0
PROBE_TIMEOUT_S = 5.0
"""At most this long for /v1/models and /tokenize (less when the entry's read timeout is)."""
MAX_ERROR_BODY_CHARS = 500


@dataclass(frozen=True)
class UrlHealth:
    """One URL of one remote model, as a probe found it."""

    model_id: str
    url: str
    reachable: bool
    latency_ms: float | None
    error: str | None
    outstanding: int


@dataclass
class RemoteModel:
    """A remote entry and what the backend learnt about its upstream."""

    entry: CatalogEntry
    source: RemoteSource
    pool: UrlPool
    headers: dict[str, str]
    reported_context_limit: int | None = None
    reachable_at: float | None = None
    tokenize_supported: bool = True
    tokenizer: TokenizerAdapter | None = None
    tokenizer_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def id(self) -> str:
        return self.entry.id

    def context_limit(self) -> int | None:
        """The configured limit, lowered to what the upstream reports; None when neither."""
        limits = [x for x in (self.entry.context_limit_tokens, self.reported_context_limit) if x]
        return min(limits) if limits else None


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
                headers=_auth_headers(entry.id, source, environ),
            )
        self._active: dict[str, RemoteStream] = {}
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
        )

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
        await self._client.aclose()

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
        await self._probe_models(model)
        return model

    def load_snapshot(self, model_id: str) -> SchedulerLoad:
        return SchedulerLoad(waiting=0, running=self._model(model_id).pool.outstanding)

    async def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """The exact prompt count (upstream /tokenize, else the entry's tokenizer) and the
        worst-case completion, as the local engine's prepare. Contacts the upstream, so an
        upstream that is down is refused here (UpstreamUnavailable), before any hold."""
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
        model = self._model(request.model_id)
        prompt_ids: tuple[int, ...] = ()
        prompt_count = await self._upstream_prompt_count(model, request)
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
            await self._probe_models(model)
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

    async def open_chat(
        self, model: RemoteModel, body: dict[str, Any]
    ) -> tuple[UpstreamUrl, httpx.Response]:
        """POST /v1/chat/completions on the best URL; on refusal, unreachability or 5xx, the
        next one (nothing has been generated yet). The URL's outstanding count is taken here
        and given back by the stream."""
        if model.pool.all_full():
            raise EngineBusy(f"model {model.id!r}: every upstream is at its concurrency cap")
        source = model.source
        timeout = httpx.Timeout(
            connect=source.connect_timeout_s,
            read=source.read_timeout_s,
            write=source.read_timeout_s,
            pool=source.connect_timeout_s,
        )
        problems: list[str] = []
        for url in model.pool.candidates():
            url.outstanding += 1
            started = time.perf_counter()
            try:
                request = self._client.build_request(
                    "POST",
                    f"{url.url}/v1/chat/completions",
                    json=body,
                    headers=model.headers,
                    timeout=timeout,
                )
                response = await self._client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                url.outstanding -= 1
                url.failed(f"unreachable: {type(exc).__name__}")
                problems.append(f"{url.url}: unreachable ({type(exc).__name__})")
                continue
            except httpx.TimeoutException as exc:
                url.outstanding -= 1
                url.failed(f"timeout: {type(exc).__name__}")
                raise UpstreamTimeout(
                    model.id, f"{url.url} sent nothing within {source.read_timeout_s:g} s"
                ) from None
            except httpx.HTTPError as exc:
                url.outstanding -= 1
                url.failed(type(exc).__name__)
                problems.append(f"{url.url}: {type(exc).__name__}")
                continue
            except BaseException:
                url.outstanding -= 1
                raise
            if response.status_code == 200:
                url.succeeded((time.perf_counter() - started) * 1000)
                model.reachable_at = time.monotonic()
                return url, response
            detail = await _error_text(response)
            url.outstanding -= 1
            if response.status_code >= 500 or response.status_code == 429:
                url.failed(f"HTTP {response.status_code}")
                problems.append(f"{url.url}: HTTP {response.status_code} {detail}")
                continue
            raise UpstreamFailed(
                model.id, f"the upstream refused the request: HTTP {response.status_code} {detail}"
            )
        raise UpstreamUnavailable(model.id, "; ".join(problems) or "no upstream URL is open")

    async def count_completion(self, model: RemoteModel, parts: Sequence[str]) -> int:
        """Tokens received without a usage count: the entry's tokenizer on the text, else
        the chunks that carried text (each at least one token, so never over-counted)."""
        tokenizer = await self._tokenizer(model)
        if tokenizer is None:
            return len(parts)
        return len(tokenizer.encode_content("".join(parts)))

    # -- probes ----------------------------------------------------------------------------
    async def health(self) -> list[UrlHealth]:
        """Every URL of every remote model, probed now (GET /v1/models), concurrently."""
        checks = [
            self._probe_url(model, url)
            for model in self._models.values()
            for url in model.pool.urls
        ]
        return list(await asyncio.gather(*checks))

    async def _probe_url(self, model: RemoteModel, url: UpstreamUrl) -> UrlHealth:
        started = time.perf_counter()
        try:
            limit = await self._get_models(model, url)
        except (httpx.HTTPError, WireError, UpstreamFailed) as exc:
            url.failed(_short(exc))
            return UrlHealth(model.id, url.url, False, None, _short(exc), url.outstanding)
        latency_ms = (time.perf_counter() - started) * 1000
        url.succeeded(latency_ms)
        model.reachable_at = time.monotonic()
        if limit is not None:
            model.reported_context_limit = limit
        return UrlHealth(model.id, url.url, True, latency_ms, None, url.outstanding)

    async def _probe_models(self, model: RemoteModel) -> None:
        problems = []
        for url in model.pool.candidates():
            health = await self._probe_url(model, url)
            if health.reachable:
                return
            problems.append(f"{url.url}: {health.error}")
        raise _unreachable(model.id, problems)

    async def _get_models(self, model: RemoteModel, url: UpstreamUrl) -> int | None:
        response = await self._client.get(
            f"{url.url}/v1/models", headers=model.headers, timeout=_probe_timeout(model.source)
        )
        if response.status_code != 200:
            raise UpstreamFailed(model.id, f"/v1/models answered HTTP {response.status_code}")
        return model_context_limit(response.json(), model.source.model)

    async def _upstream_prompt_count(
        self, model: RemoteModel, request: GenerationRequest
    ) -> int | None:
        """The prompt's exact count from the upstream's /tokenize; None when it has none (then
        never asked again) or it is turned off. UpstreamUnavailable when no URL answers."""
        if not (model.source.use_upstream_tokenize and model.tokenize_supported):
            return None
        body = tokenize_body(PreparedRequest(request, (), 1, model.id), model.source.model)
        problems = []
        for url in model.pool.candidates():
            try:
                response = await self._client.post(
                    f"{url.url}/tokenize",
                    json=body,
                    headers=model.headers,
                    timeout=_probe_timeout(model.source),
                )
            except httpx.HTTPError as exc:
                url.failed(_short(exc))
                problems.append(f"{url.url}: {_short(exc)}")
                continue
            if response.status_code in (404, 405):
                log.info("remote_tokenize_missing", model=model.id, url=url.url)
                model.tokenize_supported = False
                return None
            if response.status_code >= 500:
                url.failed(f"HTTP {response.status_code}")
                problems.append(f"{url.url}: HTTP {response.status_code}")
                continue
            if response.status_code != 200:
                raise UpstreamFailed(
                    model.id,
                    f"/tokenize answered HTTP {response.status_code}: "
                    f"{response.text[:MAX_ERROR_BODY_CHARS]}",
                )
            try:
                count, limit = tokenize_count(response.json())
            except (ValueError, WireError) as exc:
                raise UpstreamFailed(model.id, f"/tokenize: {exc}") from None
            model.reachable_at = time.monotonic()
            if limit is not None:
                model.reported_context_limit = limit
            return count
        raise _unreachable(model.id, problems)

    async def _tokenizer(self, model: RemoteModel) -> TokenizerAdapter | None:
        path = model.source.tokenizer_path
        if path is None:
            return None
        async with model.tokenizer_lock:
            if model.tokenizer is None:
                model.tokenizer = await asyncio.to_thread(_load_tokenizer, model.id, path)
        return model.tokenizer

    def _model(self, model_id: str) -> RemoteModel:
        try:
            return self._models[model_id]
        except KeyError:
            raise ModelUnavailable(model_id, "not a remote model of this catalog") from None


def _probe_timeout(source: RemoteSource) -> httpx.Timeout:
    return httpx.Timeout(
        min(PROBE_TIMEOUT_S, source.read_timeout_s), connect=source.connect_timeout_s
    )


def _unreachable(model_id: str, problems: list[str]) -> UpstreamUnavailable | UpstreamTimeout:
    """No URL answered: a timeout when every one accepted and then said nothing."""
    text = "; ".join(problems) or "no upstream URL is open"
    if problems and all("Timeout" in problem and "Connect" not in problem for problem in problems):
        return UpstreamTimeout(model_id, f"no answer in time: {text}")
    return UpstreamUnavailable(model_id, text)


def _auth_headers(
    model_id: str, source: RemoteSource, environ: Mapping[str, str]
) -> dict[str, str]:
    if source.api_key_env is None:
        return {}
    key = environ.get(source.api_key_env)
    if not key:
        raise ValueError(
            f"catalog entry {model_id!r}: api_key_env names {source.api_key_env}, "
            "which is not set in the environment"
        )
    return {"Authorization": f"Bearer {key}"}


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


async def _error_text(response: httpx.Response) -> str:
    try:
        await response.aread()
        return response.text[:MAX_ERROR_BODY_CHARS]
    except httpx.HTTPError:
        return ""
    finally:
        await response.aclose()


def _short(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:MAX_ERROR_BODY_CHARS] if text else type(exc).__name__
