"""`ledgerchat serve`, and what every command shares: settings from the command line, the
application services started without a model, and one-line failures (exit 2). The user, key
and invite commands live in `web.account_commands`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from inference.catalog import CatalogError
from ledger.errors import LedgerError
from web.default_model import DefaultModelOutcome, show_load_progress
from web.domain.accounts.tokens import SecretFileError, kept_signing_secret
from web.errors import ServiceError
from web.logging import configure_logging
from web.services import Services
from web.settings import (
    Settings,
    SettingsError,
    check_settings,
    load_settings,
    with_database_url,
)

T = TypeVar("T")
EXIT_FAILURE = 2
EXIT_INTERRUPTED = 130
# uvicorn's graceful-shutdown timeout is the grace period plus this: time for the streams the
# service ends at the grace period to send their last event and settle their holds.
SHUTDOWN_SETTLE_MARGIN_S = 10.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for benchmarks and tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment and .env first, then the command line on top, checked as a whole."""
    settings = load_settings()
    server = settings.server
    if getattr(args, "host", None) is not None:
        server = server.model_copy(update={"host": args.host})
    if getattr(args, "port", None) is not None:
        server = server.model_copy(update={"port": args.port})
    if getattr(args, "workers", None) is not None:
        server = server.model_copy(update={"workers": args.workers})
    models = settings.models
    if getattr(args, "catalog", None) is not None:
        models = models.model_copy(update={"catalog": str(args.catalog)})
    settings = settings.model_copy(update={"server": server, "models": models})
    db = getattr(args, "db", None)
    if db is not None:
        if not db.strip():
            raise SettingsError("--db is empty: give a database URL, or leave --db out")
        settings = with_database_url(settings, db)
    check_settings(settings)
    return settings


def run_with_services(args: argparse.Namespace, work: Callable[[Services], Awaitable[T]]) -> T:
    settings = settings_from_args(args)
    # Logs go to stderr as JSON so that stdout carries only the command's answer (a key
    # secret can be piped).
    configure_logging(settings.server.log_level)

    async def main() -> T:
        # No model is loaded for these commands, so the model catalog is not read either.
        services = Services(
            settings, start_engine=False, start_background_jobs=False, needs_models=False
        )
        try:
            await services.start()
            return await work(services)
        finally:
            await services.close()

    return asyncio.run(main())


class CommandError(Exception):
    """A failure already phrased for the operator: printed as one line, exit 2."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


def describe_failure(exc: BaseException) -> str:
    """One line for an operator, without SQLAlchemy's internal error codes or SQL."""
    if isinstance(exc, (ServiceError, LedgerError)):
        return str(getattr(exc, "message", None) or _first_line(exc))
    if isinstance(exc, (SettingsError, CommandError, CatalogError)):
        return _first_line(exc)
    if isinstance(exc, SQLAlchemyError):
        cause = getattr(exc, "orig", None) or exc.__cause__ or exc
        if isinstance(exc, (DBAPIError)) and exc.connection_invalidated:
            return f"cannot reach the database: {_first_line(cause)}"
        return f"database error: {type(cause).__name__}: {_first_line(cause)}"
    if isinstance(exc, (ConnectionError, socket.gaierror, TimeoutError)):
        return f"cannot reach the database: {type(exc).__name__}: {_first_line(exc)}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {_first_line(exc)}"
    return f"unexpected {type(exc).__name__}: {_first_line(exc)}"


def guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Any failure is one line on stderr and exit 2 (exit 1 is reserved for audit findings);
    Ctrl-C is a quiet exit 130."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except Exception as exc:
            print(f"error: {describe_failure(exc)}", file=sys.stderr)
            return EXIT_FAILURE

    return run


# -- serve -------------------------------------------------------------------------------
def check_port_free(host: str, port: int) -> None:
    """Bind (and let go of) the listening address before anything is started, so that a port
    in use or a bad host is reported at once; uvicorn would find out only after start-up.

    uvicorn then binds the address itself: serving on a socket bound here (its `sockets=`
    argument) left some Gradio UI requests hanging in the browser tests."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except (OSError, OverflowError) as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {_first_line(exc)}") from exc


def uvicorn_config(app: Any, settings: Settings) -> Any:
    """How `serve` runs uvicorn (tests start servers with the same configuration)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,  # our structlog configuration stays in charge
        access_log=False,
        # The app resolves X-Forwarded-For itself, from LEDGERCHAT_TRUSTED_PROXIES only;
        # uvicorn's own handling would believe any loopback peer (FORWARDED_ALLOW_IPS).
        proxy_headers=False,
        # The service ends its own streams at the grace period; uvicorn cancels what is left
        # only after they had time to send their last event and settle.
        timeout_graceful_shutdown=math.ceil(
            settings.server.shutdown_grace_s + SHUTDOWN_SETTLE_MARGIN_S
        ),
    )


def with_kept_signing_secret(settings: Settings) -> Settings:
    """LEDGERCHAT_AUTH_JWT_SECRET when set, else the secret kept in the data directory: the
    API's tokens and the UI's browser storage outlive a restart."""
    if settings.auth.jwt_secret:
        return settings
    try:
        secret = kept_signing_secret(settings.server.data_dir)
    except (SecretFileError, OSError) as exc:
        raise CommandError(f"signing secret: {_first_line(exc)}") from exc
    auth = settings.auth.model_copy(update={"jwt_secret": secret})
    return settings.model_copy(update={"auth": auth})


def service_url(settings: Settings) -> str:
    """Where people open the service: LEDGERCHAT_PUBLIC_URL, else the bind address."""
    server = settings.server
    if server.public_url:
        return server.public_url
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"http://{host}:{server.port}"


def ready_line(url: str, outcome: DefaultModelOutcome) -> str:
    """The one plain line `serve` prints when chat works (or why it does not)."""
    if outcome.error is None:
        return (
            f"ledgerchat ready: {url} (model {outcome.model_id} loaded in {outcome.load_s:.0f} s)"
        )
    return (
        f"ledgerchat serving without a model: {url} "
        f"(model {outcome.model_id} did not load: {outcome.error})"
    )


async def announce_ready(
    services: Services, listening: asyncio.Event, url: str, terminal: bool
) -> None:
    """Show how far the default model's preparation and load has come (a progress bar on a
    terminal, log lines otherwise), then print the ready line once it is loaded and uvicorn
    listens."""
    outcome = asyncio.ensure_future(services.default_model_outcome())
    await show_load_progress(
        services.engine, services.settings.chat.default_model, outcome, terminal
    )
    result = await outcome
    await listening.wait()
    if result is not None:
        print(ready_line(url, result), flush=True)


def serve(args: argparse.Namespace) -> int:
    """Run the service until SIGTERM or Ctrl-C; a signalled graceful shutdown exits 0.

    The settings, the listening socket and the services (database reachable, both schemas
    upgraded, the catalog valid) are all checked before uvicorn starts, so a start-up failure
    is one line on stderr and exit 2. The default model is prepared and loaded in the
    background while the port is open (a chat until then is refused with `model_loading`)."""
    import uvicorn

    from web.app import create_app

    settings = with_kept_signing_secret(settings_from_args(args))
    if settings.server.workers > 1:
        return serve_workers(args, settings)
    check_port_free(settings.server.host, settings.server.port)
    app = create_app(settings)
    services: Services = app.state.services

    listening = asyncio.Event()

    class GracefulServer(uvicorn.Server):
        """On the first signal: new chats get 503, and streams still running after
        LEDGERCHAT_SHUTDOWN_GRACE_S are ended by the chat service (an `error` event
        `shutting_down`, hold released), before uvicorn's own timeout would cut them."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            services.begin_shutdown_threadsafe()
            super().handle_exit(sig, frame)
            # A signalled shutdown that completes is a clean stop (exit 0): do not re-raise
            # the signal after serving, as uvicorn would.
            self._captured_signals.clear()

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                listening.set()

    config = uvicorn_config(app, settings)
    server = GracefulServer(config)

    async def main() -> None:
        announcer: asyncio.Task[None] | None = None
        try:
            try:
                await services.start()
            except Exception as exc:
                raise CommandError(f"the service did not start: {describe_failure(exc)}") from exc
            announcer = asyncio.create_task(
                announce_ready(services, listening, service_url(settings), sys.stderr.isatty())
            )
            await server.serve()
        finally:
            if announcer is not None:
                announcer.cancel()
            await services.close()

    asyncio.run(main())
    if not server.started:
        raise CommandError("the service did not start (see the log above)")
    return 0


def serve_workers(args: argparse.Namespace, settings: Settings) -> int:
    """`serve --workers N`: checked here (one line and exit 2 on a refusal), then supervised
    by `web.workers` (the signing secret is already kept, so every child reads the same)."""
    from web.workers import (
        Supervisor,
        WorkersRefused,
        check_workers,
        clear_metrics_dir,
        metrics_dir,
    )

    server = settings.server
    try:
        check_workers(settings, server.workers)
    except WorkersRefused as exc:
        raise CommandError(str(exc)) from exc
    for port in range(server.port, server.port + server.workers):
        check_port_free(server.host, port)
    path = metrics_dir(settings)
    clear_metrics_dir(path)
    return Supervisor(args, settings, path).run()


def database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="URL", help="database URL (default: settings)")


def register(subparsers: Any) -> None:
    serve_parser = subparsers.add_parser("serve", help="run the web service (API, /v1, UI)")
    serve_parser.add_argument("--host", help="interface to bind (LEDGERCHAT_HOST)")
    serve_parser.add_argument("--port", type=int, help="port to bind (LEDGERCHAT_PORT)")
    serve_parser.add_argument(
        "--workers",
        type=int,
        help="web processes on ports PORT..PORT+N-1 (LEDGERCHAT_WORKERS; N > 1 needs Redis)",
    )
    database_options(serve_parser)
    serve_parser.add_argument(
        "--catalog", type=Path, help="model catalog file (LEDGERCHAT_CATALOG)"
    )
    serve_parser.set_defaults(handler=guarded(serve))

    from web.account_commands import register_account_commands

    register_account_commands(subparsers)
