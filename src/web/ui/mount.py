"""Serving a Gradio `Blocks` at `/` inside the Litestar app, next to the API routes.

Litestar's mount at `/` would swallow every route that has path parameters (its mount regex
matches any path) and appends a trailing slash to the path it forwards, which breaks Gradio's
static assets; that is the broken page measured in FACTS.md. So the UI is mounted at the
exact top-level prefixes Gradio serves (plus a plain handler for `/` itself) and the original
request path is restored before the call reaches Gradio. Gradio's queue is started on the
first request, so the mount needs no hook in the app's lifespan.

Gradio answers far more than the page needs (uploads, run history, MCP, its own API docs), none
of it behind the service's sign-in: only the routes the page was seen to call in a browser
(tests/ui/test_browser_security.py) are let through, everything else is a 404; the page's event
calls are checked first (`event_calls.py`), so a bad one is the caller's 4xx, not Gradio's
500. Gradio's root URL is pinned (LEDGERCHAT_PUBLIC_URL, else the address the connection
arrived at), never taken from X-Forwarded-Host or X-Gradio-Server, which any client can send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import gradio as gr
from gradio.routes import App
from litestar.enums import ScopeType
from litestar.handlers import ASGIRouteHandler, asgi
from litestar.types import Receive, Scope, Send

from web.middleware import send_error
from web.ui.event_calls import checked_event_call

# Top-level paths Gradio 6 answers on. Everything else stays with Litestar (`/api`, `/v1`,
# `/schema`, `/health`, ...). Gradio's own `/openapi.json` and `/monitoring` are left out
# on purpose: the service's OpenAPI document lives at `/schema`.
GRADIO_PATH_PREFIXES: tuple[str, ...] = (
    "/gradio_api",
    "/config",
    "/assets",
    "/static",
    "/svelte",
    "/theme.css",
    "/favicon.ico",
    "/robots.txt",
    "/pwa_icon",
    "/manifest.json",
)


MAX_UPLOAD_BYTES = 1_000_000
# What the page calls (GET also allows HEAD): the page, its static files, the queue (join,
# then the event stream), unqueued events, the heartbeat, the config and the CSV download.
READ_PATHS = frozenset(
    {"/", "/config", "/theme.css", "/favicon.ico", "/robots.txt", "/gradio_api/queue/data"}
)
READ_PREFIXES = ("/assets/", "/static/", "/svelte/", "/gradio_api/heartbeat/", "/gradio_api/file=")
# queue/join starts queued events; run/predict answers the `queue=False` ones (Stop).
WRITE_PATHS = frozenset({"/gradio_api/queue/join", "/gradio_api/run/predict"})
# Headers from which Gradio would build the page's root URL; a client may send any of them.
ROOT_URL_HEADERS = frozenset({b"x-forwarded-host", b"x-forwarded-proto", b"x-gradio-server"})


def gradio_route_allowed(method: str, path: str) -> bool:
    """Whether the page needs this Gradio route (see the module docstring)."""
    method = method.upper()
    if method in ("GET", "HEAD"):
        return path in READ_PATHS or path.startswith(READ_PREFIXES)
    return method == "POST" and path in WRITE_PATHS


def root_url(scope: Scope, public_url: str) -> str:
    """The configured public URL, else http:// plus the local address the connection came in
    on (a socket fact, not a header)."""
    if public_url:
        return public_url.rstrip("/")
    host, port = scope.get("server") or ("127.0.0.1", 80)
    host = f"[{host}]" if ":" in str(host) else str(host)
    return f"http://{host}:{port}"


class GradioASGI:
    """The ASGI app of one `Blocks`, started lazily and called with the request's real path."""

    def __init__(
        self,
        blocks: gr.Blocks,
        *,
        css: str = "",
        head: str = "",
        public_url: str = "",
        cache_dir: Path | None = None,
    ) -> None:
        self._blocks = blocks
        self._public_url = public_url
        if cache_dir is not None:
            # Files the page serves (the CSV export) are copied into each component's cache:
            # a private per-process folder, not the shared, world-readable /tmp/gradio.
            for block in blocks.blocks.values():
                block.GRADIO_CACHE = str(cache_dir)
        self._app = _create_gradio_app(blocks, css=css, head=head)
        if cache_dir is not None:
            # Gradio's file route serves only from its upload folder (and allow-listed paths).
            self._app.uploaded_file_dir = str(cache_dir)
        self._start_lock = asyncio.Lock()
        self._started = False

    @property
    def blocks(self) -> gr.Blocks:
        return self._blocks

    async def _ensure_started(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            # What gradio's own lifespan does: start the event queue and its limiter.
            blocks: Any = self._blocks  # gradio leaves these two untyped
            blocks.run_startup_events()
            await blocks.run_extra_startup_events()
            self._started = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        forwarded: dict[str, Any] = dict(scope)
        # Litestar rewrote `path` to the part after the mount prefix; Gradio routes on the
        # full path. `raw_path` is untouched, percent-encoded, without the query string.
        raw_path = scope.get("raw_path")
        if raw_path:
            forwarded["path"] = unquote(raw_path.decode("latin-1"))
        if scope["type"] != ScopeType.HTTP:
            # The page uses no websocket; refuse the handshake.
            await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        if not gradio_route_allowed(str(scope.get("method", "")), forwarded["path"]):
            await send_error(send, 404, "not_found", "no such page")
            return
        if forwarded["path"] in WRITE_PATHS:
            checked = await checked_event_call(self._blocks, forwarded["path"], receive, send)
            if checked is None:
                return  # refused (and answered), or the client left
            receive = checked
        await self._ensure_started()
        forwarded["headers"] = [
            (name, value)
            for name, value in scope.get("headers", [])
            if name.lower() not in ROOT_URL_HEADERS
        ] + [(b"x-gradio-server", root_url(scope, self._public_url).encode())]
        forwarded["root_path"] = ""
        # Litestar keeps its own objects in the scope; Gradio's Starlette must not see them.
        forwarded.pop("app", None)
        forwarded.pop("router", None)
        forwarded.pop("route_handler", None)
        await self._app(forwarded, receive, send)  # type: ignore[arg-type]


def _create_gradio_app(blocks: gr.Blocks, *, css: str, head: str) -> App:
    """Prepare `blocks` the way `gradio.mount_gradio_app` does, minus the FastAPI parent."""
    # Gradio types these launch-time attributes loosely (None defaults); set them untyped.
    blocks_setup: Any = blocks
    blocks_setup.dev_mode = False
    blocks_setup.run_history = False
    blocks_setup.footer_links = []
    # The page uploads nothing; a small cap keeps Gradio's upload route from filling the disk
    # (Litestar's body limit does not reach into an ASGI mount).
    blocks_setup.max_file_size = MAX_UPLOAD_BYTES
    blocks_setup.config = blocks.get_config_file()
    blocks_setup.validate_queue_settings()
    blocks_setup.custom_mount_path = "/"
    blocks_setup.auth = None
    blocks_setup.auth_message = None
    blocks_setup.favicon_path = None
    blocks_setup.allowed_paths = []
    blocks_setup.blocked_paths = []
    blocks_setup.show_error = True
    blocks_setup.ssr_mode = False
    blocks_setup.theme = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")
    blocks_setup.css = css
    blocks_setup.js = ""
    blocks_setup.head = head
    blocks_setup.head_paths = []
    blocks_setup.css_paths = []
    blocks_setup._set_html_css_theme_variables()
    blocks_setup.transpile_to_js()
    return App.create_app(blocks, mcp_server=False)


def ui_route_handlers(gradio_app: GradioASGI) -> Sequence[ASGIRouteHandler]:
    """Litestar handlers that send `/` and Gradio's prefixes to `gradio_app`."""

    @asgi(path=list(GRADIO_PATH_PREFIXES), is_mount=True, copy_scope=True)
    async def gradio_resources(scope: Scope, receive: Receive, send: Send) -> None:
        await gradio_app(scope, receive, send)

    @asgi(path="/", copy_scope=True)
    async def gradio_page(scope: Scope, receive: Receive, send: Send) -> None:
        await gradio_app(scope, receive, send)

    return (gradio_page, gradio_resources)
