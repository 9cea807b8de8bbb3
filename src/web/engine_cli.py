"""`ledgerchat engine serve`: the inference engine alone behind an OpenAI-compatible API
(`inference.server`), for web processes that use it as a remote engine. Here, in `web`, only
because the command line and the log set-up live here; the server itself is `inference`'s.
Exit codes: 0 stopped normally, 1 the start failed (a model did not load, the port was taken),
2 usage or environment errors (no bearer secret, unknown model, bad catalog)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from web.logging import configure_logging, get_logger

log = get_logger(__name__)


def register(subparsers: Any) -> None:
    engine = subparsers.add_parser(
        "engine", help="run the inference engine as its own process (OpenAI-compatible API)"
    )
    actions = engine.add_subparsers(dest="engine_command", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="serve the catalog's models on /v1/chat/completions, /v1/models, /tokenize",
        description=(
            "Serve the local engine behind an OpenAI-compatible API with no users, billing or "
            "UI. Clients send 'Authorization: Bearer <secret>'; the secret comes from "
            "LEDGERCHAT_ENGINE_API_KEY or LEDGERCHAT_ENGINE_API_KEY_FILE."
        ),
    )
    serve.add_argument("--host", help="interface to bind (LEDGERCHAT_ENGINE_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (LEDGERCHAT_ENGINE_PORT, 8100)")
    serve.add_argument(
        "--catalog", type=Path, help="operator catalog file (default: $LEDGERCHAT_CATALOG)"
    )
    serve.add_argument(
        "--model",
        action="append",
        metavar="ID",
        help="serve only this catalog model, loaded before the port answers (repeatable; "
        "default: every catalog model, loaded on first use or at start per load_at_start)",
    )
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="accept requests without a bearer secret (refused unless --host is loopback)",
    )
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.set_defaults(handler=engine_serve)


def engine_serve(args: argparse.Namespace) -> int:
    from inference import Engine, InferenceSettings, load_catalog
    from inference.catalog import CatalogError
    from inference.errors import InferenceError
    from inference.server import (
        EngineServerError,
        EngineServerSettings,
        ServerConfig,
        resolve_api_key,
        run_server,
    )

    try:
        settings = EngineServerSettings.from_env()
        host = args.host or settings.host
        port = settings.port if args.port is None else args.port
        if not 1 <= port <= 65535:
            raise EngineServerError(f"--port {port} must be 1..65535")
        api_key = resolve_api_key(settings, host, args.no_auth)
        catalog = load_catalog(args.catalog)
        inference_settings = InferenceSettings.from_env()
        model_ids = tuple(dict.fromkeys(args.model)) if args.model else tuple(catalog.ids())
        for model_id in model_ids:
            catalog.get(model_id)
    except (EngineServerError, CatalogError, InferenceError, ValueError) as exc:
        print(f"ledgerchat engine serve: error: {exc}", file=sys.stderr)
        return 2
    if args.model:
        preload = model_ids
    else:
        preload = tuple(entry.id for entry in catalog if entry.load_at_start)
    configure_logging(args.log_level)
    if api_key is None:
        log.warning("engine_server_without_auth", host=host, port=port)
    config = ServerConfig(
        model_ids=model_ids,
        api_key=api_key,
        preload_model_ids=preload,
        max_body_bytes=settings.max_body_bytes,
    )
    return run_server(Engine(catalog, inference_settings), config, host, port)
