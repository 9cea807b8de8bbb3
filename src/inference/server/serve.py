"""Running the engine server under uvicorn until SIGINT/SIGTERM (in-flight streams end as
'cancelled' when the engine closes)."""

from __future__ import annotations

import uvicorn

from inference.engine import Engine
from inference.server.app import ServerConfig, create_app

GRACEFUL_SHUTDOWN_S = 10


def run_server(engine: Engine, config: ServerConfig, host: str, port: int) -> bool:
    """Serve until stopped; False when the start failed (a preloaded model did not load, the
    port was taken): uvicorn has logged why."""
    app = create_app(engine, config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # the caller configured logging
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            server_header=False,
        )
    )
    server.run()
    return bool(server.started)
