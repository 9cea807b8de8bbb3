"""`ledgerchat bench ledger`: throughput of the group-commit writer against the naive way, on
SQLite and PostgreSQL, and the cost of a balance read at 100,000 events over 1,000.

Workload: `callers` concurrent tasks, each looping place_hold then capture_hold on one of
`accounts` accounts (a hold plus a capture counts as two operations). The naive way does the
same number of single-event writes, one transaction each: read the last sequence, insert,
commit. Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from ledger.application import Ledger
from ledger.domain import GENESIS_HASH, canonical_json
from ledger.errors import LedgerError
from ledger.settings import LedgerSettings
from ledger.storage.database import (
    create_engines,
    normalise_url,
    sqlite_engine,
    upgrade_schema,
)
from ledger.storage.schema import accounts, events

DEFAULT_POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers (64)")
    parser.add_argument("--pairs", type=int, default=150, help="hold+capture pairs per caller")
    parser.add_argument("--accounts", type=int, default=16, help="accounts the callers share")
    parser.add_argument("--naive-ops", type=int, default=3000, help="naive single writes")
    parser.add_argument("--large-events", type=int, default=100_000, help="events, big account")
    parser.add_argument("--small-events", type=int, default=1_000, help="events, small account")
    parser.add_argument("--reads", type=int, default=300, help="balance reads per account")
    parser.add_argument(
        "--postgres-admin",
        default=os.environ.get("LEDGERCHAT_TEST_POSTGRES_DSN", DEFAULT_POSTGRES_ADMIN),
        help="PostgreSQL DSN allowed to create and drop a scratch database",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--dir", default=None, help="where the SQLite files go (a temp dir)")


async def writer_ops_per_s(
    url: str, callers: int, pairs: int, account_count: int
) -> tuple[float, float]:
    """(operations per second, process CPU microseconds per operation)."""
    settings = LedgerSettings(sweep_interval_s=0)
    ledger = await Ledger.open(url, settings=settings)
    try:
        ids = [await ledger.open_account(f"bench-{i}") for i in range(account_count)]
        for account_id in ids:
            await ledger.add_credits(account_id, 10**11, source="bench", idempotency_key="seed")

        async def caller(index: int) -> None:
            account_id = ids[index % account_count]
            for n in range(pairs):
                hold = await ledger.place_hold(
                    account_id,
                    10,
                    ttl_s=600,
                    purpose="bench",
                    reference=f"{index}-{n}",
                    idempotency_key=f"hold-{index}-{n}",
                )
                await ledger.capture_hold(
                    account_id, hold.hold, 7, idempotency_key=f"capture-{index}-{n}"
                )

        started = time.perf_counter()
        cpu_started = time.process_time()
        await asyncio.gather(*(caller(i) for i in range(callers)))
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        report = await ledger.audit()
        if not report.clean:
            raise RuntimeError(f"benchmark left a dirty ledger: {report.violations[:3]}")
        operations = callers * pairs * 2
        return operations / elapsed, cpu_s / operations * 1e6
    finally:
        await ledger.close()


async def naive_ops_per_s(url: str, callers: int, total_ops: int, account_count: int) -> float:
    """One transaction per operation: read the last sequence, insert one event, commit."""
    settings = LedgerSettings(sweep_interval_s=0)
    engines = create_engines(url, settings)
    await upgrade_schema(engines)
    ids = [f"naive_{i}" for i in range(account_count)]
    async with engines.write.begin() as connection:
        await connection.execute(
            accounts.insert(),
            [
                {
                    "account_id": a,
                    "owner_id": a,
                    "is_default": True,
                    "created_at_us": 0,
                    "head_sequence": 0,
                    "head_hash": GENESIS_HASH,
                }
                for a in ids
            ],
        )
    # Its own pool: every caller holds a connection for one short write transaction.
    naive = sqlite_engine(url, settings, pool_size=8, begin="BEGIN IMMEDIATE")
    per_caller = total_ops // callers

    async def caller(index: int) -> None:
        account_id = ids[index % account_count]
        for n in range(per_caller):
            async with naive.begin() as connection:
                last = (
                    await connection.execute(
                        select(func.coalesce(func.max(events.c.sequence), 0)).where(
                            events.c.account_id == account_id
                        )
                    )
                ).scalar_one()
                await connection.execute(
                    events.insert().values(
                        account_id=account_id,
                        sequence=last + 1,
                        event_type="charged",
                        amount=1,
                        released_amount=0,
                        posted_after=0,
                        held_after=0,
                        idempotency_key=f"{index}-{n}",
                        fingerprint="0" * 64,
                        recorded_at_us=0,
                        metadata_json=canonical_json({}),
                        prev_hash=GENESIS_HASH,
                        hash=GENESIS_HASH,
                    )
                )

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    elapsed = time.perf_counter() - started
    await naive.dispose()
    await engines.dispose()
    return per_caller * callers / elapsed


async def balance_read_ratio(url: str, small: int, large: int, reads: int) -> dict[str, float]:
    """Median balance() time on an account with `large` events over one with `small`.

    Reads alternate between the two accounts so that both medians see the same machine load.
    """
    settings = LedgerSettings(sweep_interval_s=0)
    ledger = await Ledger.open(url, settings=settings)
    try:
        accounts: dict[int, str] = {}
        for size in (small, large):
            account_id = await ledger.open_account(f"reads-{size}")
            await ledger.add_credits(account_id, 10**11, source="bench", idempotency_key="seed")
            writers = 64

            async def charge(worker: int, count: int, account_id: str = account_id) -> None:
                for n in range(count):
                    await ledger.charge(account_id, 1, idempotency_key=f"c-{worker}-{n}")

            share, extra = divmod(size - 1, writers)
            await asyncio.gather(*(charge(w, share + (w < extra)) for w in range(writers)))
            accounts[size] = account_id
        samples: dict[int, list[float]] = {small: [], large: []}
        for _ in range(reads):
            for size, account_id in accounts.items():
                started = time.perf_counter()
                await ledger.balance(account_id)
                samples[size].append(time.perf_counter() - started)
        small_s, large_s = statistics.median(samples[small]), statistics.median(samples[large])
        return {
            "small_read_ms": small_s * 1000,
            "large_read_ms": large_s * 1000,
            "ratio": large_s / small_s,
        }
    finally:
        await ledger.close()


async def _admin_execute(admin_url: str, statement: str) -> None:
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def _postgres_database(admin_dsn: str) -> tuple[str, str] | str:
    """(url, name) of a fresh scratch database, or the reason there is none."""
    name = f"ledgerchat_bench_{uuid.uuid4().hex[:10]}"
    admin_url = normalise_url(admin_dsn)
    try:
        await asyncio.wait_for(_admin_execute(admin_url, f'CREATE DATABASE "{name}"'), 10)
    except Exception as exc:  # any failure to connect means: no PostgreSQL here
        return f"PostgreSQL at {admin_dsn} not usable ({type(exc).__name__}: {exc})"
    return f"{admin_url.rsplit('/', 1)[0]}/{name}", name


async def _drop_postgres_database(admin_dsn: str, name: str) -> None:
    await _admin_execute(normalise_url(admin_dsn), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run(args: argparse.Namespace, directory: Path, console: Console) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]

    def sqlite_url(name: str) -> str:
        return f"sqlite+aiosqlite:///{directory / f'{name}-{run_id}.db'}"

    results: dict[str, Any] = {}
    console.print("sqlite: group-commit writer ...")
    # The machine is shared: the load average and CPU per operation put the rate in context.
    results["load_average_1m"] = round(os.getloadavg()[0], 2)
    ops_per_s, cpu_us = await writer_ops_per_s(
        sqlite_url("writer"), args.callers, args.pairs, args.accounts
    )
    results["sqlite_ops_per_s"] = round(ops_per_s)
    results["sqlite_cpu_us_per_op"] = round(cpu_us, 1)
    console.print("sqlite: naive one transaction per operation ...")
    results["sqlite_naive_ops_per_s"] = round(
        await naive_ops_per_s(sqlite_url("naive"), args.callers, args.naive_ops, args.accounts)
    )
    results["sqlite_speedup"] = round(
        results["sqlite_ops_per_s"] / results["sqlite_naive_ops_per_s"], 1
    )
    console.print(
        f"sqlite: balance reads at {args.small_events} and {args.large_events} events ..."
    )
    reads = await balance_read_ratio(
        sqlite_url("reads"), args.small_events, args.large_events, args.reads
    )
    results["balance_read_ratio"] = round(reads["ratio"], 3)
    results["balance_read_ms_small"] = round(reads["small_read_ms"], 3)
    results["balance_read_ms_large"] = round(reads["large_read_ms"], 3)
    results["postgres_ops_per_s"] = None
    if args.skip_postgres:
        results["postgres_note"] = "skipped (--skip-postgres)"
    else:
        database = await _postgres_database(args.postgres_admin)
        if isinstance(database, str):
            results["postgres_note"] = f"skipped: {database}"
        else:
            url, name = database
            console.print("postgresql: group-commit writer ...")
            try:
                ops_per_s, cpu_us = await writer_ops_per_s(
                    url, args.callers, args.pairs, args.accounts
                )
                results["postgres_ops_per_s"] = round(ops_per_s)
                results["postgres_cpu_us_per_op"] = round(cpu_us, 1)
            finally:
                await _drop_postgres_database(args.postgres_admin, name)
    results["callers"] = args.callers
    return results


def bench_command(args: argparse.Namespace) -> int:
    for name in ("callers", "pairs", "accounts", "naive_ops", "reads"):
        if getattr(args, name) < 1:
            print(f"ledgerchat bench ledger: --{name.replace('_', '-')} must be >= 1")
            return 2
    if not 1 <= args.small_events < args.large_events:
        print("ledgerchat bench ledger: need 1 <= --small-events < --large-events")
        return 2
    # One log line per command would cost more than the commands: keep warnings only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    console = Console(stderr=True)
    directory = Path(args.dir or tempfile.mkdtemp(prefix="ledger-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        results = asyncio.run(run(args, directory, console))
    except (LedgerError, OSError) as exc:
        print(f"ledgerchat bench ledger: error: {exc}")
        return 2
    table = Table(title="ledger benchmark")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in results.items():
        table.add_row(name, str(value))
    Console().print(table)
    print(json.dumps(results, sort_keys=True))
    return 0
