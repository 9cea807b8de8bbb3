"""Running the engine server: the `--model` models loaded first (a failure is one log line and
exit status 1, before any port is bound), then uvicorn in the same event loop until SIGINT or
SIGTERM (in-flight streams then end as 'cancelled' when the engine closes)."""

from __future__ import annotations

import asyncio

import structlog
import uvicorn

from inference.engine import Engine
from inference.errors import InferenceError
from inference.server.app import ServerConfig, create_app

log = structlog.get_logger(__name__)

GRACEFUL_SHUTDOWN_S = 10


def run_server(engine: Engine, config: ServerConfig, host: str, port: int) -> int:
    """Serve until stopped; the exit status: 0 after a normal stop, 1 when the start failed
    (a model did not load, the port was taken), with the reason logged."""
    return asyncio.run(_serve(engine, config, host, port))


async def _serve(engine: Engine, config: ServerConfig, host: str, port: int) -> int:
    for model_id in config.preload_model_ids:
        try:
            await engine.load(model_id)
        except InferenceError as exc:
            log.error("engine_server_start_failed", model=model_id, error=exc.message)
            await engine.close()
            return 1
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(engine, config),
            host=host,
            port=port,
            log_config=None,  # the caller configured logging
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            server_header=False,
        )
    )
    try:
        await server.serve()
    except SystemExit:  # uvicorn's own start failure (port taken): it logged why
        return 1
    finally:
        await engine.close()  # idempotent; the app's shutdown hook closed it on a normal stop
    return 0 if server.started else 1
