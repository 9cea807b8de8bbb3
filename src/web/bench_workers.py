"""`ledgerchat bench service --workers 1,2,3`: the whole multi-process service under a streaming
load, for each number of web processes.

It starts one `ledgerchat engine serve --model M` (kept for every N), then for each N: a
scratch PostgreSQL database, `ledgerchat serve --workers N` (with Redis, under a key prefix of
its own, when N > 1; the processes reach the engine as a `remote` catalog entry) and nginx with
deploy/nginx/ledgerchat.conf as shipped in front; it registers the bench users through nginx
(their signup grant pays), warms up, and runs the load at each user count (`bench_load.py`).

Per N and user count it reports:
- `aggregate_tok_s`: completion tokens of every chat / wall time from the first chat's start
  to the last chat's end (client side, through nginx);
- `billing_overhead_ms_p50` / `_p99`: server side, what each web process logs per chat
  (`chat_settled` `billing_ms`, the same time as the `ledgerchat_billing_overhead_seconds`
  histogram): the idempotency claim, budgets and hold before the engine is called, and the
  capture or release, balance and history writes after the last token, of exactly the chats
  of that run (matched by request id).
The last line is one JSON object (docs/benchmarks.md has its shape). Every process it started
is stopped, the scratch database dropped and the Redis prefix deleted, whatever ends the run
(Ctrl-C and SIGTERM included)."""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from web.bench_cluster import (
    ClusterError,
    ProcessGroups,
    check_nginx_available,
    check_redis,
    delete_redis_prefix,
    drop_database,
)
from web.bench_report import print_runs, summary
from web.bench_service_run import Engine, RunOptions, ScratchState, bench_one_worker_count

MAX_WORKERS = 16
MAX_USERS = 256
MAX_TOKENS = 2048
DEFAULT_USERS = "8,32"
DEFAULT_DURATION_S = 60.0
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def add_workers_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "several web processes (--workers)",
        "with --workers: the service as several processes behind nginx (docs/benchmarks.md)",
    )
    group.add_argument(
        "--workers",
        help="comma-separated numbers of web processes, e.g. 1,2,3 (each gets its own run)",
    )
    group.add_argument(
        "--users", default=DEFAULT_USERS, help=f"concurrent users per run (default {DEFAULT_USERS})"
    )
    load = group.add_mutually_exclusive_group()
    load.add_argument(
        "--duration-s",
        type=float,
        help=f"start chats for this long per user count (default {DEFAULT_DURATION_S:.0f})",
    )
    load.add_argument("--requests", type=int, help="or: this many chats per user count")
    group.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help="PostgreSQL server (a URL that may create databases) for the scratch databases",
    )
    group.add_argument(
        "--redis-url", default=DEFAULT_REDIS, help="Redis for N > 1 (a fresh key prefix is used)"
    )
    group.add_argument(
        "--workdir",
        type=Path,
        help="keep the run's folder (process logs, nginx prefix, catalogs) here instead of a "
        "temporary folder that is removed",
    )


def _int_list(text: str, name: str, highest: int) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated whole numbers, not {text!r}") from None
    if not values or any(not 1 <= value <= highest for value in values):
        raise ValueError(f"--{name}: each number must be 1..{highest} (got {text!r})")
    return sorted(set(values))


def run_options(args: argparse.Namespace) -> RunOptions:
    """The checked options, or ValueError saying which one is wrong."""
    if args.db or args.engine_url:
        raise ValueError(
            "--workers starts its own PostgreSQL database and engine server: "
            "--db and --engine-url do not apply (use --postgres and --model)"
        )
    if not 1 <= args.max_tokens <= MAX_TOKENS:
        raise ValueError(f"--max-tokens must be 1..{MAX_TOKENS} (LEDGERCHAT_CHAT_MAX_MAX_TOKENS)")
    if args.requests is not None and args.requests < 1:
        raise ValueError("--requests must be >= 1")
    duration = args.duration_s
    if args.requests is None and duration is None:
        duration = DEFAULT_DURATION_S
    if duration is not None and duration <= 0:
        raise ValueError("--duration-s must be > 0")
    return RunOptions(
        workers=_int_list(args.workers, "workers", MAX_WORKERS),
        users=_int_list(args.users, "users", MAX_USERS),
        model=args.model or "gemma-3-270m",
        engine_catalog=args.catalog,
        max_tokens=args.max_tokens,
        duration_s=duration,
        requests=args.requests,
        postgres=args.postgres,
        redis_url=args.redis_url,
    )


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def _cleanup_guard(state: ScratchState) -> Iterator[None]:
    """Turn SIGTERM into the same clean stop as Ctrl-C; while cleaning up, ignore both (a
    second Ctrl-C must not leave processes behind)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            clean_up(state)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)


def clean_up(state: ScratchState) -> None:
    """Stop every process, drop every scratch database, delete the Redis prefix."""
    state.processes.stop_all()
    for name in list(state.databases):
        try:
            drop_database(state.postgres, name)
            state.databases.remove(name)
        except Exception as exc:  # report it; the other clean-ups still run
            _progress(f"could not drop the scratch database {name}: {exc}")
    if state.redis_used:
        try:
            delete_redis_prefix(state.redis_url, state.redis_prefix)
        except Exception as exc:
            _progress(f"could not delete the Redis keys {state.redis_prefix}*: {exc}")
    if state.keep_dir is None:
        shutil.rmtree(state.scratch, ignore_errors=True)


def bench_service_workers(args: argparse.Namespace) -> int:
    try:
        options = run_options(args)
    except ValueError as exc:
        print(f"ledgerchat bench service: {exc}")
        return 2
    keep: Path | None = args.workdir
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    scratch = keep or Path(tempfile.mkdtemp(prefix="ledgerchat-bench-service-"))
    state = ScratchState(
        scratch=scratch,
        processes=ProcessGroups(),
        postgres=options.postgres,
        redis_url=options.redis_url,
        redis_prefix=f"ledgerchat-bench-{secrets.token_hex(4)}:",
        keep_dir=keep,
    )
    runs: list[dict[str, Any]] = []
    try:
        with _cleanup_guard(state):
            # What would stop a run half-way is checked before anything starts.
            check_nginx_available()
            if max(options.workers) > 1:
                check_redis(options.redis_url)
            engine = Engine.start(state, options)
            for workers in options.workers:
                runs.extend(bench_one_worker_count(state, options, engine, workers))
    except KeyboardInterrupt:
        print("ledgerchat bench service: interrupted; every process it started is stopped")
        return 130
    except ClusterError as exc:
        print(f"ledgerchat bench service: {exc}")
        return 2
    print_runs(runs, options)
    print(json.dumps(summary(runs, options), sort_keys=True))
    return 0


def _progress(message: str) -> None:
    import sys

    print(f"bench service: {message}", file=sys.stderr, flush=True)
