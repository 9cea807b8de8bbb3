"""Per-request plumbing as one ASGI middleware: a request id (kept from X-Request-ID when
sane, else new) bound to every log line and echoed in the response, the per-address rate
limit, the latency histogram and one `request_finished` log line."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import structlog
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from web.exception_handlers import error_body
from web.logging import get_logger
from web.metrics import REQUEST_LATENCY_S
from web.rate_limit import RateLimiter

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Paths that stay cheap and unlimited so probes and scrapers never get 429, and the UI's
# static files (one page load fetches ~85 of them) never use up a client's request budget.
UNLIMITED_PATHS = (
    "/health",
    "/ready",
    "/metrics",
    "/assets/",
    "/static/",
    "/svelte/",
    "/theme.css",
    "/favicon.ico",
)

log = get_logger("web.request")


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class RequestContextMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, address_limiter: RateLimiter) -> None:
        self.address_limiter = address_limiter

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope.get("path", "")
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, method=scope.get("method"), path=path
        )
        started = time.perf_counter()
        status = {"code": 500}

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if not path.startswith(UNLIMITED_PATHS):
                retry_after = self.address_limiter.hit(client_address(scope))
                if retry_after:
                    await _send_429(send_with_request_id, retry_after)
                    return
            await next_app(scope, receive, send_with_request_id)
        finally:
            elapsed_s = time.perf_counter() - started
            route = str(scope.get("path_template") or "unmatched")
            REQUEST_LATENCY_S.labels(scope.get("method", ""), route, str(status["code"])).observe(
                elapsed_s
            )
            log.info(
                "request_finished", status=status["code"], duration_ms=round(elapsed_s * 1000, 2)
            )
            structlog.contextvars.clear_contextvars()


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            return text if REQUEST_ID_PATTERN.fullmatch(text) else None
    return None


async def _send_429(send: Any, retry_after_s: int) -> None:
    body = json.dumps(
        error_body(
            "rate_limited", "too many requests from this address", {"retry_after_s": retry_after_s}
        )
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(retry_after_s).encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
