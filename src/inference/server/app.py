"""The engine server's HTTP surface (Litestar): OpenAI's `/v1/chat/completions` and
`/v1/models`, vLLM's `/tokenize`, `/health` and Prometheus `/metrics`, in front of one local
`Engine`. No users, no billing: a shared bearer secret guards `/v1/*` and `/tokenize`;
`/health` and `/metrics` are open, as vLLM's are. Every error is an OpenAI error object."""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import msgspec
import structlog
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.handlers import BaseRouteHandler
from litestar.response import Stream
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST

from inference.engine import Engine
from inference.errors import InferenceError
from inference.requests import GenerationRequest
from inference.server.completions import (
    ClientGone,
    chat_messages,
    collect_completion,
    generation_request,
    sse_events,
)
from inference.server.errors import (
    ApiError,
    bad_request,
    from_inference_error,
    unauthorized,
    unavailable,
)
from inference.server.metrics import EngineServerMetrics
from inference.server.schemas import (
    ChatCompletionBody,
    ChunkWriter,
    ErrorType,
    TokenizeBody,
    error_body,
)
from inference.text import encode_prompt

log = structlog.get_logger(__name__)

Body = TypeVar("Body")
HTTP_CLIENT_CLOSED_REQUEST = 499
COUNTED_PATHS = frozenset({"/v1/chat/completions", "/v1/models", "/tokenize", "/health"})


@dataclass(frozen=True)
class ServerConfig:
    """What one engine server serves and how it is guarded. `api_key` None: no auth (the CLI
    allows that only on loopback). `preload_model_ids` are loaded before the port is bound."""

    model_ids: tuple[str, ...]
    api_key: str | None
    preload_model_ids: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 2**20


@dataclass
class ServerState:
    engine: Engine
    config: ServerConfig
    metrics: EngineServerMetrics
    started_at: int

    @property
    def known_model_ids(self) -> frozenset[str]:
        return frozenset(self.config.model_ids)

    def check_served(self, model_id: str) -> None:
        if model_id not in self.config.model_ids:
            raise ApiError(
                404,
                f"model {model_id!r} is not served here; served: "
                f"{', '.join(self.config.model_ids)}",
                "model_not_found",
                "not_found_error",
                "model",
            )


def _server(connection: ASGIConnection[Any, Any, Any, Any]) -> ServerState:
    return cast(ServerState, connection.app.state.engine_server)


def _decode(raw: bytes, body_type: type[Body]) -> Body:
    try:
        return msgspec.json.decode(raw, type=body_type)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise bad_request(f"invalid request body: {exc}") from None


def require_api_key(
    connection: ASGIConnection[Any, Any, Any, Any], route_handler: BaseRouteHandler
) -> None:
    expected = _server(connection).config.api_key
    if expected is None:
        return
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("missing bearer token: send 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise unauthorized("invalid API key")


@post("/v1/chat/completions", guards=[require_api_key], status_code=200)
async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
    server = _server(request)
    body = _decode(await request.body(), ChatCompletionBody)
    server.check_served(body.model)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    engine = server.engine
    prepared = await engine.prepare(generation_request(body, completion_id))
    if prepared.fell_back_from is not None and not engine.catalog.get(body.model).fallback_on_v1:
        raise unavailable(
            f"model {body.model!r} cannot be loaded and its catalog entry does not allow "
            "answering with its fallback here (fallback_on_v1)",
            "model_unavailable",
        )
    stream = engine.stream(prepared)
    await stream.start()  # EngineBusy and the like answer before any byte is sent
    if body.stream:
        writer = ChunkWriter(completion_id, prepared.model_id, body.include_usage)
        return Stream(
            sse_events(engine, stream, writer, server.metrics),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        answer = await collect_completion(
            engine, stream, completion_id, server.metrics, request.receive
        )
    except ClientGone:
        return Response(content=None, status_code=HTTP_CLIENT_CLOSED_REQUEST)
    return Response(content=answer, status_code=200)


@get("/v1/models", guards=[require_api_key])
async def list_models(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The served models this engine can load, each with its context limit as vLLM's
    `max_model_len`."""
    server = _server(request)
    statuses = {status.id: status for status in server.engine.models()}
    data = [
        {
            "id": model_id,
            "object": "model",
            "created": server.started_at,
            "owned_by": "ledgerchat",
            "root": model_id,
            "parent": None,
            "max_model_len": statuses[model_id].context_limit_tokens,
        }
        for model_id in server.config.model_ids
        if statuses[model_id].available
    ]
    return {"object": "list", "data": data}


@post("/tokenize", guards=[require_api_key], status_code=200)
async def tokenize(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """vLLM's `/tokenize`: the token ids of a chat exactly as a completion would prompt the
    model (the same frame and count the engine bills), or of a plain prompt."""
    server = _server(request)
    body = _decode(await request.body(), TokenizeBody)
    server.check_served(body.model)
    if (body.messages is None) == (body.prompt is None):
        raise bad_request("send either 'messages' or 'prompt'")
    limits = server.engine.settings
    if body.messages is not None and len(body.messages) > limits.max_prompt_messages:
        raise bad_request(f"at most {limits.max_prompt_messages} messages per request")
    texts = [message.text() for message in body.messages or ()] + [body.prompt or ""]
    if any(len(text) > limits.max_message_chars for text in texts):
        raise bad_request(f"a message or prompt has more than {limits.max_message_chars} chars")
    loaded = await server.engine.load(body.model)
    entry = server.engine.catalog.get(body.model)
    if body.messages is not None:
        if not body.add_generation_prompt:
            raise bad_request(
                "only add_generation_prompt=true is supported: the engine's prompt always "
                "ends where the reply starts",
                "add_generation_prompt",
            )
        messages = chat_messages(body.messages)
        GenerationRequest(model_id=body.model, messages=messages)  # a chat request's rules
        ids = await asyncio.to_thread(encode_prompt, loaded.tokenizer, messages, entry.prompting)
    else:
        bos = loaded.tokenizer.bos_token_id
        prefix = [bos] if body.add_special_tokens and bos is not None else []
        ids = prefix + await asyncio.to_thread(loaded.tokenizer.encode_plain, body.prompt or "")
    return {"count": len(ids), "max_model_len": entry.context_limit_tokens, "tokens": ids}


@get("/health")
async def health(request: Request[Any, Any, Any]) -> dict[str, str]:
    return {"status": "ok"}


@get("/metrics")
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(_server(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _error_response(error: ApiError) -> Response[Any]:
    return Response(
        error_body(error.message, error.error_type, error.code, error.param),
        status_code=error.status,
        headers=error.headers,
    )


def _on_api_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _error_response(cast(ApiError, exc))


def _on_inference_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    error = cast(InferenceError, exc)
    return _error_response(from_inference_error(error, _server(request).known_model_ids))


def _on_http_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    error = cast(HTTPException, exc)
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
        error.status_code, "invalid_request"
    )
    error_type: ErrorType = "server_error" if error.status_code >= 500 else "invalid_request_error"
    return _error_response(ApiError(error.status_code, error.detail, code, error_type))


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("engine_server_error", path=request.url.path, error=repr(exc), exc_info=exc)
    return _error_response(ApiError(500, "internal error", "internal_error", "server_error"))


def _count_requests(metrics: EngineServerMetrics) -> Any:
    """ASGI middleware counting answers by endpoint and status (known paths only)."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope.get("path", "")
            if str(scope["type"]) != "http" or path not in COUNTED_PATHS:
                await app(scope, receive, send)
                return

            async def counting_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = str(message["status"])
                    metrics.requests.labels(endpoint=path, status=status).inc()
                await send(message)

            await app(scope, receive, counting_send)

        return counted

    return middleware


def create_app(
    engine: Engine, config: ServerConfig, metrics: EngineServerMetrics | None = None
) -> Litestar:
    """The ASGI app over a started engine; it closes the engine on shutdown. Loading
    `config.preload_model_ids` is the runner's job (`serve.run_server`), before binding."""
    unknown = [model_id for model_id in config.model_ids if model_id not in engine.catalog]
    if unknown or not config.model_ids:
        raise ValueError(f"models not in the catalog: {unknown or 'none given'}")
    metrics = metrics or EngineServerMetrics()
    metrics.watch_schedulers(engine, config.model_ids)
    state = ServerState(engine, config, metrics, int(time.time()))

    async def announce(app: Litestar) -> None:
        log.info("engine_server_ready", models=list(config.model_ids), auth=bool(config.api_key))

    async def close_engine(app: Litestar) -> None:
        await engine.close()

    return Litestar(
        route_handlers=[chat_completions, list_models, tokenize, health, metrics_endpoint],
        state=State({"engine_server": state}),
        on_startup=[announce],
        on_shutdown=[close_engine],
        exception_handlers={
            ApiError: _on_api_error,
            InferenceError: _on_inference_error,
            HTTPException: _on_http_exception,
            Exception: _on_unexpected,
        },
        middleware=[_count_requests(metrics)],
        request_max_body_size=config.max_body_bytes,
        openapi_config=None,
        logging_config=None,  # the command configured logging (structlog, one line shape)
    )
