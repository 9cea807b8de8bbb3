"""What the remote backend knows of each remote model (`RemoteModel`: its URLs, its context
limit as the upstream reports it, whether it has /tokenize) and the HTTP calls it makes to the
upstream (`UpstreamClient`): open a chat stream on the best URL, failing over to the next one
only before anything was received; count a prompt with /tokenize; probe /v1/models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from inference.catalog import CatalogEntry
from inference.errors import (
    EngineBusy,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from inference.remote.source import RemoteSource
from inference.remote.urls import UpstreamUrl, UrlPool
from inference.remote.wire import WireError, model_context_limit, tokenize_body, tokenize_count
from inference.requests import GenerationRequest, PreparedRequest
from inference.text import TokenizerAdapter

log = structlog.get_logger(__name__)
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
    tokenizer_warmup: asyncio.Task[TokenizerAdapter | None] | None = None

    @property
    def id(self) -> str:
        return self.entry.id

    def context_limit(self) -> int | None:
        """The configured limit, lowered to what the upstream reports; None when neither."""
        limits = [x for x in (self.entry.context_limit_tokens, self.reported_context_limit) if x]
        return min(limits) if limits else None


class UpstreamClient:
    """The HTTP calls to remote engines, over one pooled client."""

    def __init__(self) -> None:
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

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

    async def probe_url(self, model: RemoteModel, url: UpstreamUrl) -> UrlHealth:
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

    async def probe_models(self, model: RemoteModel) -> None:
        problems = []
        for url in model.pool.candidates():
            health = await self.probe_url(model, url)
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

    async def prompt_count(self, model: RemoteModel, request: GenerationRequest) -> int | None:
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


def auth_headers(model_id: str, source: RemoteSource, environ: Mapping[str, str]) -> dict[str, str]:
    if source.api_key_env is None:
        return {}
    key = environ.get(source.api_key_env)
    if not key:
        raise ValueError(
            f"catalog entry {model_id!r}: api_key_env names {source.api_key_env}, "
            "which is not set in the environment"
        )
    return {"Authorization": f"Bearer {key}"}


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
