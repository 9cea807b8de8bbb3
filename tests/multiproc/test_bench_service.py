"""`ledgerchat bench service --workers` run tiny (the tiny test model, 1 and 2 web processes, a
few chats): its last line is the documented JSON object, and when it ends, normally or by
Ctrl-C, no process it started is left, nor its scratch databases or Redis keys.

Every process the bench starts inherits one marker variable, so "no process left" is checked
by reading every process's environment (/proc), not by trusting the bench's own list."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import debian
from tests.multiproc.cluster import NGINX, POSTGRES_ADMIN_DSN, REPO, wait_until
from tests.remote.upstreams import OFFLINE_ENV, engine_catalog


@pytest.fixture(autouse=True)
def nginx_installed() -> None:
    debian.require("nginx", Path(NGINX))


MARKER = "BENCH_TEST_MARKER"
"""Not LEDGERCHAT_*: the bench leaves those out of the web processes' environment."""
BENCH_TIMEOUT_S = 600
REDIS_URL = os.environ.get("LEDGERCHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment has MARKER=marker."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def scratch_databases() -> set[str]:
    import asyncio

    import asyncpg

    async def names() -> set[str]:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            rows = await admin.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE 'ledgerchat_bench_%'"
            )
        finally:
            await admin.close()
        return {row["datname"] for row in rows}

    return asyncio.run(names())


def bench_redis_keys() -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        return sum(1 for _ in client.scan_iter(match="ledgerchat-bench-*", count=500))
    finally:
        client.close()


@pytest.fixture
def bench_command(tiny_gemma_dir: Path, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    catalog = tmp_path / "engine-catalog.toml"
    catalog.write_text(engine_catalog(tiny_gemma_dir), encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERCHAT_")}
    src = str(REPO / "src")
    environ.update(
        {
            **OFFLINE_ENV,
            "PYTHONPATH": os.pathsep.join([src, str(REPO)]),
            # The tiny model gains nothing from threads; a second one slows a busy machine.
            "LEDGERCHAT_INFERENCE_TORCH_THREADS": "1",
            "LEDGERCHAT_INFERENCE_CACHE_DIR": str(tmp_path / "model-cache"),
            MARKER: secrets.token_hex(8),
        }
    )
    command = [sys.executable, "-m", "web.cli", "bench", "service", "--model", "tiny"]
    command += ["--catalog", str(catalog), "--postgres", POSTGRES_ADMIN_DSN]
    command += ["--redis-url", REDIS_URL, "--max-tokens", "8"]
    return command, environ


@pytest.fixture
def before(postgres_unavailable_reason: str | None) -> tuple[set[str], int]:
    if postgres_unavailable_reason is not None:
        pytest.skip(postgres_unavailable_reason)
    try:
        bench_redis_keys()
    except Exception as exc:  # the bench needs a Redis for 2 web processes
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    return scratch_databases(), bench_redis_keys()


def assert_cleaned_up(environ: dict[str, str], before: tuple[set[str], int]) -> None:
    wait_until(lambda: not processes_with(environ[MARKER]), 30, "every bench process gone")
    assert scratch_databases() <= before[0]
    assert bench_redis_keys() <= before[1]


def test_bench_prints_the_json_and_cleans_up(
    bench_command: tuple[list[str], dict[str, str]], before: tuple[set[str], int]
) -> None:
    """1 and 2 web processes, 2 users, 4 chats each: the last line has the aggregate tok/s and
    the billing overhead p99 keyed by web processes then users; every chat of a run has its
    server-side billing time; with 2 processes both answered; nothing is left behind."""
    command, environ = bench_command
    command = [*command, "--workers", "1,2", "--users", "2", "--requests", "4"]
    done = subprocess.run(
        command, env=environ, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("aggregate_tok_s_by_workers", "billing_overhead_ms_p99_by_workers"):
        assert set(result[key]) == {"1", "2"}, result
        assert all(set(by_users) == {"2"} for by_users in result[key].values()), result
        assert all(value > 0 for by_users in result[key].values() for value in by_users.values())
    for run in result["runs"]:
        assert run["chats"] == 4 and run["failed_chats"] == 0, run
        assert run["billing_samples"] == 4, run
        assert run["completion_tokens"] > 0, run
    assert [run["processes_answering"] for run in result["runs"]] == [1, 2], result["runs"]
    assert_cleaned_up(environ, before)


def test_ctrl_c_stops_every_process(
    bench_command: tuple[list[str], dict[str, str]], before: tuple[set[str], int]
) -> None:
    """SIGINT (Ctrl-C) while the load runs: the bench exits 130 and leaves no process, database
    or Redis key behind."""
    command, environ = bench_command
    command = [*command, "--workers", "2", "--users", "2", "--duration-s", "600"]
    bench = subprocess.Popen(
        command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert bench.stderr is not None
        deadline = time.monotonic() + BENCH_TIMEOUT_S
        for line in bench.stderr:  # progress lines; "streaming" once the load has begun
            if "users: streaming" in line or time.monotonic() > deadline:
                break
        assert bench.poll() is None, "the bench ended before its load began"
        assert len(processes_with(environ[MARKER])) >= 4  # engine, supervisor, 2 web, nginx
        bench.send_signal(signal.SIGINT)
        stdout, _ = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 130, stdout
    assert "interrupted" in stdout
    assert_cleaned_up(environ, before)
