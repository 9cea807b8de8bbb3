"""`ledgerchat user create|list|topup|disable|enable`, `ledgerchat key create` and
`ledgerchat invite create`.

They run the same application services as the HTTP API (no model is loaded for them), so the
password policy, the signup grant and idempotency hold here too. An operator's
`user create` is not subject to the registration mode or the per-address signup limit.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import uuid
from typing import Any

from web.commands import CommandError, database_options, guarded, run_with_services
from web.domain.admin.services import INTERNAL_ADMIN
from web.services import Services
from web.settings import API_KEY_SCOPES

SECONDS_PER_HOUR = 3600


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if args.password:
        return str(args.password)
    try:
        first = getpass.getpass("password: ")
        second = getpass.getpass("repeat password: ")
    except EOFError as exc:
        raise CommandError(
            "no password given (stdin ended): use --password-stdin to pipe one"
        ) from exc
    if first != second:
        raise CommandError("the passwords differ")
    return first


def user_create(args: argparse.Namespace) -> int:
    password = _password(args)

    async def work(services: Services) -> str:
        user = await services.accounts.register(
            args.username, args.email, password, role="admin" if args.admin else "user"
        )
        balance = await services.billing.balance_of(user.account_id)
        return f"created {user.role} {user.username} (id {user.id}), balance {balance.available}"

    print(run_with_services(args, work))
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

    rows = run_with_services(args, work)
    header = ["id", "username", "email", "role", "posted", "held", "available"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def user_topup(args: argparse.Namespace) -> int:
    async def work(services: Services) -> str:
        user = await services.accounts.find_user(args.username)
        newest = await services.ledger.history(user.account_id, limit=1)
        sequence_before = max((entry.sequence for entry in newest.entries), default=0)
        result = await services.admin.top_up(
            INTERNAL_ADMIN,
            user.id,
            args.amount,
            idempotency_key=args.idempotency_key or f"cli-{uuid.uuid4()}",
            note=args.note,
        )
        applied = await services.ledger.history(user.account_id, limit=1)
        if all(entry.event_id != result.event_id for entry in applied.entries) or all(
            entry.sequence <= sequence_before for entry in applied.entries
        ):
            # The idempotency key was used before: the ledger answered with that event.
            return (
                f"{user.username}: +{args.amount} already applied (same idempotency key),"
                f" available {result.balance.available}"
            )
        return f"{user.username}: +{args.amount}, available {result.balance.available}"

    print(run_with_services(args, work))
    return 0


def key_create(args: argparse.Namespace) -> int:
    async def work(services: Services) -> str:
        user = await services.accounts.find_user(args.username)
        identity = await services.accounts.identity_for(user.id)
        created = await services.api_keys.create(identity, args.name, args.scope)
        return created.secret

    print(run_with_services(args, work))
    return 0


def _user_status(args: argparse.Namespace, disable: bool) -> int:
    async def work(services: Services) -> str:
        user = await services.accounts.find_user(args.username)
        if disable:
            changed = await services.admin.disable(INTERNAL_ADMIN, user.id)
            return f"disabled {changed.username}: sessions and API keys revoked"
        changed = await services.admin.enable(INTERNAL_ADMIN, user.id)
        return f"enabled {changed.username} (API keys revoked by the disable stay revoked)"

    print(run_with_services(args, work))
    return 0


def user_disable(args: argparse.Namespace) -> int:
    return _user_status(args, disable=True)


def user_enable(args: argparse.Namespace) -> int:
    return _user_status(args, disable=False)


def invite_create(args: argparse.Namespace) -> int:
    if args.expires_in_hours is not None and args.expires_in_hours < 0:
        raise CommandError("--expires-in-hours must not be negative (0: never expires)")

    async def work(services: Services) -> str:
        expires_in_s = (
            None if args.expires_in_hours is None else int(args.expires_in_hours * SECONDS_PER_HOUR)
        )
        created = await services.admin.create_invite(
            INTERNAL_ADMIN, expires_in_s=expires_in_s, note=args.note
        )
        return created.code

    print(run_with_services(args, work))
    return 0


def register_account_commands(subparsers: Any) -> None:
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
    database_options(create)
    create.set_defaults(handler=guarded(user_create))

    listing = user_sub.add_parser("list", help="list users with balances")
    database_options(listing)
    listing.set_defaults(handler=guarded(user_list))

    topup = user_sub.add_parser("topup", help="add credits to a user")
    topup.add_argument("username")
    topup.add_argument("amount", type=int)
    topup.add_argument("--note", default="admin top-up (cli)")
    topup.add_argument("--idempotency-key", help="makes a repeated command add the credits once")
    database_options(topup)
    topup.set_defaults(handler=guarded(user_topup))

    key = subparsers.add_parser("key", help="manage API keys")
    key_sub = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    key_create_parser = key_sub.add_parser("create", help="create an API key; prints the secret")
    key_create_parser.add_argument("username")
    key_create_parser.add_argument("--name", default="cli")
    key_create_parser.add_argument(
        "--scope",
        action="append",
        choices=API_KEY_SCOPES,
        help="what the key may do, repeatable (default: LEDGERCHAT_AUTH_API_KEY_DEFAULT_SCOPES)",
    )
    database_options(key_create_parser)
    key_create_parser.set_defaults(handler=guarded(key_create))

    for action, handler, help_text in (
        ("disable", user_disable, "disable a user: sign-in refused, sessions and keys revoked"),
        ("enable", user_enable, "enable a disabled user again (revoked keys stay revoked)"),
    ):
        status = user_sub.add_parser(action, help=help_text)
        status.add_argument("username")
        database_options(status)
        status.set_defaults(handler=guarded(handler))

    invite = subparsers.add_parser("invite", help="manage registration invites")
    invite_sub = invite.add_subparsers(dest="invite_command", metavar="ACTION", required=True)
    invite_create_parser = invite_sub.add_parser(
        "create", help="create a single-use invite code; prints the code"
    )
    invite_create_parser.add_argument(
        "--expires-in-hours",
        type=float,
        help="hours the code stays valid; 0: never (default: LEDGERCHAT_AUTH_INVITE_DEFAULT_TTL_S)",
    )
    invite_create_parser.add_argument("--note", default="", help="what the invite is for")
    database_options(invite_create_parser)
    invite_create_parser.set_defaults(handler=guarded(invite_create))
