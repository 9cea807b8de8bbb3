"""`ledgerchat engine serve`: the local engine alone behind an OpenAI-compatible HTTP API
(`/v1/chat/completions`, `/v1/models`, vLLM's `/tokenize`, `/health`, `/metrics`), so that
web processes elsewhere can use it as a remote engine. No users, no billing, no UI; a shared
bearer secret. Like the rest of `inference`, it never imports `web` or `ledger`."""

from __future__ import annotations

from inference.server.app import ServerConfig, create_app
from inference.server.metrics import EngineServerMetrics
from inference.server.serve import run_server
from inference.server.settings import (
    EngineServerError,
    EngineServerSettings,
    is_loopback,
    resolve_api_key,
)

__all__ = [
    "EngineServerError",
    "EngineServerMetrics",
    "EngineServerSettings",
    "ServerConfig",
    "create_app",
    "is_loopback",
    "resolve_api_key",
    "run_server",
]
