"""`ledgerchat refund` and `ledgerchat usage`: an operator's refund of one reply and the
usage report, through the same admin service as the API (`INTERNAL_ADMIN` acts; the actor
recorded on a refund is `cli` unless `--actor` names the operator).

Exit codes: 0 done; 1 the refund was refused by the ledger's rule (more than the reply's
capture took minus earlier refunds, or nothing left to refund); 2 anything else (unknown
request id, bad input, database unreachable).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import uuid
from typing import Any

import msgspec

from ledger.errors import RefundExceedsTaken
from web.commands import CommandError, database_options, guarded, run_with_services
from web.domain.admin.refunds import MAX_REASON_CHARS, RefundRequest
from web.domain.admin.services import INTERNAL_ADMIN
from web.domain.admin.usage import usage_csv
from web.domain.admin.usage_keys import KeyUsageReport, key_usage_csv, key_usage_table
from web.services import Services

EXIT_REFUSED = 1


def refund(args: argparse.Namespace) -> int:
    reason = args.reason.strip()
    if not reason or len(reason) > MAX_REASON_CHARS:
        raise CommandError(f"--reason must be 1-{MAX_REASON_CHARS} characters")
    if args.credits is not None and args.credits < 1:
        raise CommandError("--credits must be a positive whole number")
    data = RefundRequest(request_id=args.request_id, reason=reason, credits=args.credits)
    actor = msgspec.structs.replace(INTERNAL_ADMIN, username=args.actor)

    async def work(services: Services) -> str:
        result = await services.admin.refund(
            actor, data, idempotency_key=args.idempotency_key or f"cli-{uuid.uuid4()}"
        )
        again = " (already applied: same idempotency key)" if result.replayed else ""
        return (
            f"{result.username}: refunded {result.credits} of {result.captured} credits for "
            f"{result.request_id}{again}; refunded in all {result.refunded_total}, "
            f"available {result.balance.available}"
        )

    try:
        print(run_with_services(args, work))
    except RefundExceedsTaken as exc:
        print(f"refused: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def usage(args: argparse.Namespace) -> int:
    if args.key is not None and args.by != "key":
        raise CommandError("--key needs --by key")

    async def work(services: Services) -> str:
        if args.by == "key":
            keys = await services.admin.key_usage(
                INTERNAL_ADMIN,
                username=args.user,
                key_id=args.key,
                since=args.since,
                until=args.until,
            )
            return _key_usage_text(keys, args.format)
        report = await services.admin.usage(
            INTERNAL_ADMIN, username=args.user, since=args.since, until=args.until
        )
        if args.format == "csv":
            return usage_csv(report).rstrip("\n")
        if args.format == "json":
            return json.dumps(msgspec.to_builtins(report), indent=2)
        lines = [
            f"{'day':<10}  {'user':<20}  {'model':<24}  requests  tokens_in  tokens_out  credits"
        ]
        for row in report.rows:
            lines.append(
                f"{row.day:<10}  {row.username:<20}  {row.model:<24}  {row.requests:>8}  "
                f"{row.prompt_tokens:>9}  {row.completion_tokens:>10}  {row.credits:>7}"
            )
        lines.append(
            f"{'total':<10}  {'':<20}  {'':<24}  {report.total_requests:>8}  "
            f"{report.total_prompt_tokens:>9}  {report.total_completion_tokens:>10}  "
            f"{report.total_credits:>7}"
        )
        return "\n".join(lines)

    print(run_with_services(args, work))
    return 0


def _key_usage_text(report: KeyUsageReport, output_format: str) -> str:
    if output_format == "csv":
        return key_usage_csv(report).rstrip("\n")
    if output_format == "json":
        return json.dumps(msgspec.to_builtins(report), indent=2)
    lines = [
        f"{'day':<10}  {'key':<24}  {'user':<16}  {'model':<20}  requests  tokens_in  "
        "tokens_out  credits"
    ]
    for row in key_usage_table(report):
        day, key_id, name, _, user, model, *counts = row
        key = f"{key_id} {name}" if key_id not in (None, "") else str(name or "")
        requests, prompt, completion, credits = counts
        lines.append(
            f"{day!s:<10}  {key[:24]:<24}  {user!s:<16}  {model!s:<20}  {requests:>8}  "
            f"{prompt:>9}  {completion:>10}  {credits:>7}"
        )
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    refund_parser = subparsers.add_parser(
        "refund", help="refund all or part of one chat reply by its request id"
    )
    refund_parser.add_argument("request_id", metavar="REQUEST_ID")
    refund_parser.add_argument(
        "--credits", type=int, help="credits to give back (default: all not yet refunded)"
    )
    refund_parser.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    refund_parser.add_argument("--actor", default="cli", help="who refunds (recorded)")
    refund_parser.add_argument("--idempotency-key", help="makes a repeated command refund once")
    database_options(refund_parser)
    refund_parser.set_defaults(handler=guarded(refund))

    usage_parser = subparsers.add_parser(
        "usage", help="credits and tokens per UTC day, user (or API key) and model, with totals"
    )
    usage_parser.add_argument(
        "--by",
        choices=("user", "key"),
        default="user",
        help="one line per user, or per API key (replies from a signed-in session: no key)",
    )
    usage_parser.add_argument("--user", help="one user (default: every user)")
    usage_parser.add_argument(
        "--key", type=int, metavar="KEY_ID", help="one API key by id (with --by key)"
    )
    usage_parser.add_argument("--since", type=_day, help="first UTC day (default: 29 days ago)")
    usage_parser.add_argument("--until", type=_day, help="last UTC day (default: today)")
    usage_parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    database_options(usage_parser)
    usage_parser.set_defaults(handler=guarded(usage))
