"""`ledgerchat audit` and `ledgerchat bench ledger`.

`register(subparsers)` adds `audit`; `register_bench(bench_subparsers)` adds `ledger` under the
shared `bench` group that web/cli.py creates. Exit codes: 0 clean, 1 violations found,
2 usage or database errors (a message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from ledger.audit import AuditReport
from ledger.checkpoints import load_public_key
from ledger.errors import LedgerError
from ledger.queries import audit_database
from ledger.settings import LedgerSettings, default_database_url, default_public_key_path
from ledger.storage.database import normalise_url, sqlite_path

EXIT_CLEAN = 0
EXIT_VIOLATIONS = 1
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="replay the credit ledger and report violations",
        description="Replay every account's log: hash chains, balances, snapshots, holds, "
        "refunds, idempotency keys and totals. Exit 0 clean, 1 violations, 2 errors.",
    )
    parser.add_argument(
        "--db",
        default=None,
        help="database URL (default: LEDGERCHAT_DATABASE_URL, else the data dir's SQLite file)",
    )
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--account", default=None, help="audit only this account id")
    parser.add_argument(
        "--public-key",
        default=None,
        metavar="FILE",
        help="check checkpoint signatures with this Ed25519 public key (PEM or base64; "
        "default: <data dir>/ledger-signing-key.pub when it exists)",
    )
    parser.set_defaults(handler=audit_command)


def register_bench(bench_subparsers: Any) -> None:
    from ledger.bench import add_arguments, bench_command

    parser = bench_subparsers.add_parser(
        "ledger",
        help="ledger throughput (group commit vs naive) and balance read cost",
        description="Prints a table, then one JSON line with sqlite_ops_per_s, "
        "sqlite_naive_ops_per_s, postgres_ops_per_s and balance_read_ratio.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=bench_command)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


def _fail(message: str) -> int:
    print(f"ledgerchat audit: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _public_key(path_text: str | None) -> Ed25519PublicKey | None:
    """The key named by --public-key (it must exist), else the data dir's if it exists."""
    path = Path(path_text) if path_text else default_public_key_path()
    if not path_text and not path.is_file():
        return None
    return load_public_key(path.read_bytes())


def audit_command(args: argparse.Namespace) -> int:
    if args.db is not None and not args.db.strip():
        return _fail("--db is empty: give a database URL, or leave --db out for the default")
    try:
        url = normalise_url(args.db or default_database_url())
        path = sqlite_path(url)
        if path is not None and not path.is_file():
            return _fail(f"no database file at {path}")
        public_key = _public_key(args.public_key)
        # Read only: no migration, no writer; a non-ledger database is reported, not changed.
        report = asyncio.run(
            audit_database(
                url,
                account_id=args.account,
                settings=LedgerSettings.from_env(),
                public_key=public_key,
            )
        )
    except (LedgerError, ValueError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot reach the database: {exc}")
    except SQLAlchemyError as exc:
        return _fail(f"database error: {_first_line(exc)}")
    except Exception as exc:  # exit 1 means violations only: anything else is exit 2, one line
        return _fail(f"unexpected {type(exc).__name__}: {_first_line(exc)}")
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    elif args.format == "csv":
        print(render_csv(report), end="")
    else:
        render_table(report, Console())
    return EXIT_CLEAN if report.clean else EXIT_VIOLATIONS


def render_csv(report: AuditReport) -> str:
    """One row per violation, per account and per total: `record` says which."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["record", "kind", "account_id", "sequence", "value", "detail"])
    for v in report.violations:
        sequence = "" if v.sequence is None else v.sequence
        writer.writerow(["violation", v.kind, v.account_id or "", sequence, "", v.detail])
    for a in report.accounts:
        writer.writerow(["account", "available", a.account_id, "", a.available, ""])
    for name, value in report.to_dict()["totals"].items():
        writer.writerow(["total", name, "", "", value, ""])
    return buffer.getvalue()


def render_table(report: AuditReport, console: Console) -> None:
    accounts = Table(title="Accounts (replayed)")
    id_width = max((len(a.account_id) for a in report.accounts), default=10)
    accounts.add_column("account", no_wrap=True, min_width=id_width)
    accounts.add_column("owner", overflow="fold")
    for column in ("events", "posted", "held", "available", "snapshots", "violations"):
        accounts.add_column(column, justify="right")
    for a in report.accounts:
        accounts.add_row(
            a.account_id,
            a.owner_id,
            str(a.events),
            str(a.posted),
            str(a.held),
            str(a.available),
            str(a.snapshots_checked),
            str(a.violations),
        )
    console.print(accounts)
    totals = Table(title="Totals")
    totals.add_column("total")
    totals.add_column("credits", justify="right")
    for name, value in report.to_dict()["totals"].items():
        totals.add_row(name, str(value))
    console.print(totals)
    if report.violations:
        violations = Table(title=f"{len(report.violations)} violations", style="red")
        for column in ("kind", "account", "sequence", "detail"):
            violations.add_column(column)
        for v in report.violations:
            sequence = "" if v.sequence is None else str(v.sequence)
            violations.add_row(v.kind, v.account_id or "", sequence, v.detail)
        console.print(violations)
        console.print(f"[red]audit found {len(report.violations)} violations[/red]")
    else:
        console.print(
            f"[green]clean[/green]: {report.accounts_checked} accounts, "
            f"{report.events_checked} events checked"
        )
