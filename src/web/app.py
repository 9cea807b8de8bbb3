"""`create_app(settings) -> Litestar`: the JSON API under /api, the OpenAI-compatible API under
/v1, OpenAPI at /schema, probes and metrics, and the Gradio UI at / when `web.ui` is present.

The application services are built here (`Services`), started in the app's lifespan and
closed gracefully on shutdown; `app.state.services` is the one instance every handler and the
UI share.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, MediaType, Response, Router
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_204_NO_CONTENT
from litestar.types import Scope

from inference import Engine
from web.auth import AUTH_MIDDLEWARE, SECURITY_COMPONENTS, key_scopes
from web.domain.accounts.controllers import AuthController, MeController
from web.domain.admin.controllers import AdminController
from web.domain.alerts.controllers import AlertsController
from web.domain.billing.controllers import BillingController
from web.domain.budgets.controllers import AdminCapsController, MyBudgetsController
from web.domain.chat.controllers import ChatController, ConversationsController
from web.domain.keys.controllers import ApiKeysController
from web.domain.openai.controllers import OpenAIController
from web.domain.receipts.controllers import ReceiptsController
from web.domain.system.controllers import health, metrics_endpoint, ready
from web.exception_handlers import EXCEPTION_HANDLERS
from web.logging import configure_logging, get_logger
from web.middleware import install_request_context
from web.openapi import document_errors, match_server_schemas
from web.services import Services
from web.settings import Settings, load_settings

log = get_logger(__name__)
API_VERSION = "0.1.0"


def _ui_handlers(services: Services) -> Sequence[Any]:
    """The UI's route handlers, or none when the UI package is not installed."""
    try:
        from web.ui import mount_ui  # type: ignore[attr-defined,unused-ignore]
    except (ModuleNotFoundError, ImportError) as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name not in ("web.ui", "gradio"):
            raise
        log.info("ui_not_mounted", reason=str(exc))
        return ()
    mounted = mount_ui(services)
    if isinstance(mounted, list | tuple):
        return tuple(mounted)
    return (mounted,)


def complete_options_allow(app: Litestar) -> None:
    """Make every automatic OPTIONS answer list all of its path's methods. Litestar builds the
    OPTIONS handler with the first handler registered on a path and keeps it when the route is
    rebuilt with more, so `OPTIONS /api/keys` listed POST but not GET."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.handler_name == "options_handler" and handler.http_methods == {"OPTIONS"}:
                handler._fn = _options_answer(sorted(route.methods))


def _options_answer(methods: list[str]) -> Any:
    def options_handler(scope: Scope) -> Response[None]:
        return Response(
            content=None,
            status_code=HTTP_204_NO_CONTENT,
            headers={"Allow": ", ".join(methods)},
            media_type=MediaType.TEXT,
        )

    return options_handler


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    mount_ui: bool = True,
    start_background_jobs: bool = True,
    configure_logs: bool = True,
) -> Litestar:
    """Build the app. `engine` injects an already started inference engine (tests, bench)."""
    settings = settings or load_settings()
    if configure_logs:
        configure_logging(settings.server.log_level)
    services = Services(settings, engine=engine, start_background_jobs=start_background_jobs)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.close()

    api = Router(
        path="/",
        route_handlers=[
            AuthController,
            MeController,
            ApiKeysController,
            BillingController,
            ChatController,
            ConversationsController,
            AdminController,
            AlertsController,
            MyBudgetsController,
            AdminCapsController,
            OpenAIController,
            ReceiptsController,
        ],
        middleware=[AUTH_MIDDLEWARE],
        # API keys reach only the routes their scopes allow (see web.auth).
        guards=[key_scopes],
    )
    handlers: list[Any] = [health, ready, metrics_endpoint, api]
    if mount_ui and settings.server.ui_enabled:
        handlers.extend(_ui_handlers(services))
    config = AppConfig(
        route_handlers=handlers,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        state=State({"services": services}),
        request_max_body_size=settings.server.max_request_body_bytes,
        openapi_config=OpenAPIConfig(
            title="ledgerchat",
            version=API_VERSION,
            path="/schema",
            components=SECURITY_COMPONENTS,
            render_plugins=[SwaggerRenderPlugin()],
        ),
        debug=False,
    )
    app = Litestar.from_config(config)
    complete_options_allow(app)
    install_request_context(app, services.address_limiter, settings.server)
    document_errors(app.openapi_schema)
    match_server_schemas(app)
    return app
