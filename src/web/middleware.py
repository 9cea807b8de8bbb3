"""Per-request plumbing as one ASGI layer: the client's real address (web.request_guard), a
request id (kept from X-Request-ID when sane, else new) bound to every log line and echoed in
the response, the edge refusals (cross-origin 403, non-JSON 415), the per-address rate limit,
the security headers, the latency histogram and one `request_finished` log line.

It wraps Litestar's whole HTTP handler (`install_request_context`) rather than sitting in the
app's middleware list: Litestar runs that list only for matched routes, and an exception raised
by route middleware (authentication's 401, the per-user 429) is turned into a response outside
it. As app middleware, a 404 had no log line and no X-Request-ID, and every 401 was logged and
counted as a 500.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote

import structlog
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from web.exception_handlers import error_body
from web.logging import get_logger
from web.metrics import REQUEST_LATENCY_S
from web.rate_limit import RateLimiter
from web.request_guard import ClientAddresses, parse_networks, refusal, security_headers
from web.settings import ServerSettings

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Probes and scrapers never get 429 (exact paths), and neither do the UI's static files (one
# page load fetches ~85 of them; prefixes), so they never use up a client's request budget.
UNLIMITED_PATHS = frozenset({"/health", "/ready", "/metrics", "/theme.css", "/favicon.ico"})
UNLIMITED_PREFIXES = ("/assets/", "/static/", "/svelte/")
# The sticky-session cookie of the UI: Gradio keeps its queue and page state in the process
# that served the page and sets no cookie of its own, so a load balancer in front of several
# processes hashes this one (nginx `hash $cookie_ledgerchat_route consistent`). Random, no
# meaning to the app; the stateless API and probes neither get nor need it.
ROUTE_COOKIE = "ledgerchat_route"
STATELESS_PREFIXES = ("/api/", "/v1/", "/health", "/ready", "/metrics", "/schema")

log = get_logger("web.request")


def client_address(scope: Scope) -> str:
    """The client address RequestContext resolved (proxies taken into account)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def install_request_context(
    app: Litestar, address_limiter: RateLimiter, server: ServerSettings
) -> None:
    """Put the request layer around everything that answers HTTP requests in `app`: routing,
    route middleware and Litestar's exception handling, so it sees every response."""
    app.asgi_handler = RequestContext(app.asgi_handler, address_limiter, server)


class RequestContext:
    def __init__(self, app: ASGIApp, address_limiter: RateLimiter, server: ServerSettings) -> None:
        self.app = app
        self.address_limiter = address_limiter
        self.addresses = ClientAddresses(parse_networks(server.trusted_proxies))
        self.public_url = server.public_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path = request_path(scope)
        client = scope.get("client")
        # Everything downstream (login lockout, rate limits, logs, the UI) reads this.
        scope["client"] = (self.addresses.resolve(scope), client[1] if client else 0)
        extra_headers = [
            (REQUEST_ID_HEADER.encode(), request_id.encode()),
            *security_headers(path),
            *_route_cookie(scope, path),
        ]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, method=scope.get("method"), path=path
        )
        started = time.perf_counter()
        status = {"code": 500}

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                present = {name.lower() for name, _ in message.get("headers", [])}
                headers = list(message.get("headers", []))
                headers.extend(
                    item
                    for item in extra_headers
                    if item[0] not in present or item[0] == b"set-cookie"
                )
                message = {**message, "headers": headers}
            await send(message)

        try:
            refused = refusal(scope, path, self.public_url)
            if refused is not None:
                await send_error(send_with_request_id, *refused)
                return
            if path not in UNLIMITED_PATHS and not path.startswith(UNLIMITED_PREFIXES):
                retry_after = await self.address_limiter.hit(client_address(scope))
                if retry_after:
                    await _send_429(send_with_request_id, retry_after)
                    return
            await self.app(scope, receive, send_with_request_id)
        finally:
            elapsed_s = time.perf_counter() - started
            route = route_label(scope, path)
            REQUEST_LATENCY_S.labels(scope.get("method", ""), route, str(status["code"])).observe(
                elapsed_s
            )
            log.info(
                "request_finished", status=status["code"], duration_ms=round(elapsed_s * 1000, 2)
            )
            structlog.contextvars.clear_contextvars()


def route_label(scope: Scope, path: str) -> str:
    """The `route` of the request metrics: the matched route's template; for a mounted ASGI
    app (the UI), which Litestar gives no template, its mount path (with `/*` below it); else
    `unmatched`."""
    template = scope.get("path_template")
    if template:
        return str(template)
    handler = scope.get("route_handler")
    if handler is not None and getattr(handler, "is_mount", False):
        for mount in sorted(handler.paths, key=len, reverse=True):
            if path == mount:
                return mount
            if path.startswith(f"{mount}/"):
                return f"{mount}/*"
    return "unmatched"


def request_path(scope: Scope) -> str:
    """The path the client asked for. Litestar has already rewritten `path` for mounted apps
    by the time middleware runs (`/assets/index.js` arrives as `/index.js/`); `raw_path` is
    the untouched original (percent-encoded, no query string)."""
    raw_path = scope.get("raw_path")
    if raw_path:
        return unquote(raw_path.decode("latin-1"))
    return str(scope.get("path", ""))


def _route_cookie(scope: Scope, path: str) -> list[tuple[bytes, bytes]]:
    """A Set-Cookie of the UI's sticky-session cookie when the browser has none yet."""
    if path.startswith(STATELESS_PREFIXES):
        return []
    for name, value in scope.get("headers", []):
        if name.lower() == b"cookie" and f"{ROUTE_COOKIE}=".encode() in value:
            return []
    cookie = f"{ROUTE_COOKIE}={uuid.uuid4().hex}; Path=/; HttpOnly; SameSite=Lax"
    return [(b"set-cookie", cookie.encode())]


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            return text if REQUEST_ID_PATTERN.fullmatch(text) else None
    return None


async def _send_429(send: Any, retry_after_s: int) -> None:
    await send_error(
        send,
        429,
        "rate_limited",
        "too many requests from this address",
        {"retry_after_s": retry_after_s},
        [(b"retry-after", str(retry_after_s).encode())],
    )


async def send_error(
    send: Any,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An error answer in the service's shape, sent straight to ASGI `send` (for what answers
    outside Litestar's exception handlers: this layer and the UI's mount)."""
    body = json.dumps(error_body(code, message, details)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
