"""`ledgerchat serve`, `ledgerchat user create|list|topup` and `ledgerchat key create`.

The user and key commands run the same application services as the HTTP API (no model is
loaded for them), so the password policy, the signup grant and idempotency hold here too.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from web.domain.admin.services import INTERNAL_ADMIN
from web.errors import ServiceError
from web.logging import configure_logging
from web.services import Services
from web.settings import Settings, SettingsError, load_settings

T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for benchmarks and tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment and .env first, then the command line on top."""
    settings = load_settings()
    server = settings.server
    if getattr(args, "host", None):
        server = dataclasses.replace(server, host=args.host)
    if getattr(args, "port", None):
        server = dataclasses.replace(server, port=args.port)
    database = settings.database
    if getattr(args, "db", None):
        database = dataclasses.replace(database, url=args.db)
    models = settings.models
    if getattr(args, "catalog", None):
        models = dataclasses.replace(models, catalog=str(args.catalog))
    return dataclasses.replace(settings, server=server, database=database, models=models)


def _run_with_services(args: argparse.Namespace, work: Callable[[Services], Awaitable[T]]) -> T:
    settings = settings_from_args(args)
    # Logs go to stderr as JSON so that stdout carries only the command's answer (a key
    # secret can be piped).
    configure_logging(settings.server.log_level)

    async def main() -> T:
        services = Services(settings, start_engine=False, start_background_jobs=False)
        await services.start()
        try:
            return await work(services)
        finally:
            await services.close()

    return asyncio.run(main())


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (ServiceError, SettingsError) as exc:
            print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return 2
        except Exception as exc:
            code = getattr(exc, "code", None)
            if code is None:
                raise
            print(f"error ({code}): {exc}", file=sys.stderr)
            return 2

    return run


# -- serve -------------------------------------------------------------------------------
def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from web.app import create_app

    settings = settings_from_args(args)
    app = create_app(settings)
    services: Services = app.state.services

    class GracefulServer(uvicorn.Server):
        """Marks the chat service as shutting down the moment a signal arrives: new chats get
        503, and streams still running when uvicorn's grace period ends are released in full
        (reason `cancelled`) rather than billed as a client disconnect."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if services.started:
                services.chat.begin_shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,  # our structlog configuration stays in charge
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.server.shutdown_grace_s)),
    )
    GracefulServer(config).run()
    return 0


# -- users -------------------------------------------------------------------------------
def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if args.password:
        return str(args.password)
    first = getpass.getpass("password: ")
    if first != getpass.getpass("repeat password: "):
        raise SystemExit("error: the passwords differ")
    return first


def user_create(args: argparse.Namespace) -> int:
    password = _password(args)

    async def work(services: Services) -> str:
        user = await services.accounts.register(
            args.username, args.email, password, role="admin" if args.admin else "user"
        )
        balance = await services.billing.balance_of(user.account_id)
        return f"created {user.role} {user.username} (id {user.id}), balance {balance.available}"

    print(_run_with_services(args, work))
    return 0


def user_list(args: argparse.Namespace) -> int:
    async def work(services: Services) -> list[list[str]]:
        rows = []
        for entry in await services.admin.users(INTERNAL_ADMIN):
            user = entry.user
            rows.append(
                [
                    str(user.id),
                    user.username,
                    user.email,
                    user.role,
                    str(entry.balance.posted),
                    str(entry.balance.held),
                    str(entry.balance.available),
                ]
            )
        return rows

    rows = _run_with_services(args, work)
    header = ["id", "username", "email", "role", "posted", "held", "available"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def user_topup(args: argparse.Namespace) -> int:
    async def work(services: Services) -> str:
        user = await services.accounts.find_user(args.username)
        result = await services.admin.top_up(
            INTERNAL_ADMIN,
            user.id,
            args.amount,
            idempotency_key=args.idempotency_key or f"cli-{uuid.uuid4()}",
            note=args.note,
        )
        return f"{user.username}: +{args.amount}, available {result.balance.available}"

    print(_run_with_services(args, work))
    return 0


def key_create(args: argparse.Namespace) -> int:
    async def work(services: Services) -> str:
        user = await services.accounts.find_user(args.username)
        identity = await services.accounts.identity_for(user.id)
        created = await services.api_keys.create(identity, args.name)
        return created.secret

    print(_run_with_services(args, work))
    return 0


def _database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="URL", help="database URL (default: settings)")


def register(subparsers: Any) -> None:
    serve_parser = subparsers.add_parser("serve", help="run the web service (API, /v1, UI)")
    serve_parser.add_argument("--host", help="interface to bind (LEDGERCHAT_HOST)")
    serve_parser.add_argument("--port", type=int, help="port to bind (LEDGERCHAT_PORT)")
    _database_options(serve_parser)
    serve_parser.add_argument(
        "--catalog", type=Path, help="model catalog file (LEDGERCHAT_CATALOG)"
    )
    serve_parser.set_defaults(handler=_guarded(serve))

    user = subparsers.add_parser("user", help="manage users")
    user_sub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    create = user_sub.add_parser("create", help="create a user (with --admin: an administrator)")
    create.add_argument("username")
    create.add_argument("--email", required=True)
    create.add_argument("--password", help="the password (prefer --password-stdin or the prompt)")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    create.add_argument("--admin", action="store_true", help="give the admin role")
    _database_options(create)
    create.set_defaults(handler=_guarded(user_create))

    listing = user_sub.add_parser("list", help="list users with balances")
    _database_options(listing)
    listing.set_defaults(handler=_guarded(user_list))

    topup = user_sub.add_parser("topup", help="add credits to a user")
    topup.add_argument("username")
    topup.add_argument("amount", type=int)
    topup.add_argument("--note", default="admin top-up (cli)")
    topup.add_argument("--idempotency-key", help="makes a repeated command add the credits once")
    _database_options(topup)
    topup.set_defaults(handler=_guarded(user_topup))

    key = subparsers.add_parser("key", help="manage API keys")
    key_sub = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    key_create_parser = key_sub.add_parser("create", help="create an API key; prints the secret")
    key_create_parser.add_argument("username")
    key_create_parser.add_argument("--name", default="cli")
    _database_options(key_create_parser)
    key_create_parser.set_defaults(handler=_guarded(key_create))
