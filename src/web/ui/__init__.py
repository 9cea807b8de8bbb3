"""The Gradio front end, served at `/` by the same process as the API.

`mount_ui(services)` builds the page over the application services and returns the Litestar
route handlers that serve it; `web.app.create_app` adds them to its route handlers. The UI
holds no billing or auth rules: it calls the services the API calls and presents the answers.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from litestar.handlers import ASGIRouteHandler

from web.services import Services
from web.ui.export_files import gradio_cache_folder
from web.ui.mount import GRADIO_PATH_PREFIXES, GradioASGI, ui_route_handlers
from web.ui.page import UILimits, build_blocks
from web.ui.styles import PAGE_CSS, PAGE_HEAD


def storage_secret_for(jwt_secret: str) -> str:
    """The key Gradio encrypts the browser-stored refresh token with. Derived from the
    configured JWT secret so tabs stay signed in across restarts; random when none is set
    (then every restart signs tabs out, as it also invalidates access tokens)."""
    if not jwt_secret:
        return secrets.token_urlsafe(32)
    return hmac.new(
        jwt_secret.encode(), b"ledgerchat-ui-browser-storage", hashlib.sha256
    ).hexdigest()


def mount_ui(services: Services) -> Sequence[ASGIRouteHandler]:
    """Route handlers serving the UI at `/` and Gradio's own top-level paths."""
    chat_settings = services.settings.chat
    limits = UILimits(
        default_max_tokens=chat_settings.default_max_tokens,
        max_tokens_limit=chat_settings.max_max_tokens,
        max_message_chars=chat_settings.max_message_chars,
    )
    blocks = build_blocks(
        services, limits, storage_secret=storage_secret_for(services.settings.auth.jwt_secret)
    )
    gradio_app = GradioASGI(
        blocks,
        css=PAGE_CSS,
        head=PAGE_HEAD,
        public_url=services.settings.server.public_url,
        cache_dir=gradio_cache_folder(),
    )
    return ui_route_handlers(gradio_app)


__all__ = ["GRADIO_PATH_PREFIXES", "UILimits", "mount_ui"]
