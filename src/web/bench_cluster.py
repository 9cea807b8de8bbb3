"""The processes of a multi-process service as `ledgerchat bench service --workers` starts them
(and tests/multiproc, which shares the nginx part): child processes each in a process group of
their own, stopped together (SIGTERM, then SIGKILL after a grace period) whatever ended the
run; nginx with deploy/nginx/ledgerchat.conf copied byte for byte into a private prefix (its
pid, logs and temp folders are there, so no root and no /var/lib/nginx is needed); a scratch
PostgreSQL database; and the removal of a Redis key prefix.

Nothing here knows the bench's figures: it starts, waits for and stops processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

SHIPPED_NGINX_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "ledgerchat.conf"
NGINX_BINARY = shutil.which("nginx") or "/usr/sbin/nginx"
STOP_TIMEOUT_S = 30.0
POLL_S = 0.2
NGINX_CHECK_TIMEOUT_S = 60.0


class ClusterError(RuntimeError):
    """A process of the service could not start (its message says which and why)."""


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until true; ClusterError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(POLL_S)


def signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the process's whole group, SIGKILL to the group after `timeout_s`. (A
    `serve --workers` supervisor waits for its workers before it exits, so a group whose
    leader has exited is empty.)"""
    if process.poll() is None:
        signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            signal_group(process, signal.SIGKILL)
            process.wait(timeout_s)


def spawn(
    command: Sequence[str], env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start `command` in a new session (its own process group: a Ctrl-C at the terminal
    reaches only the caller, which then stops it), output appended to `log_path`."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            list(command),
            env=dict(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=log_path.parent,
        )


class ProcessGroups:
    """Every process a run started, stopped in reverse order by `stop_all` (idempotent)."""

    def __init__(self) -> None:
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        process = spawn(command, env, log_path)
        self._processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        stop_process(process)
        if process in self._processes:
            self._processes.remove(process)

    def stop_all(self) -> None:
        while self._processes:
            stop_process(self._processes.pop())


def free_port_block(count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive loopback ports that are free right now."""
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65535:
            continue
        if all(_port_free(first + offset) for offset in range(count)):
            return first
    raise ClusterError(f"no block of {count} free consecutive ports found")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def nginx_main_conf(prefix: Path) -> str:
    """The smallest nginx.conf around the shipped file: this prefix's own pid, logs and temp
    paths, one worker, `include ledgerchat.conf` in `http`."""
    temp = prefix / "temp"
    # As root nginx's workers would drop to `nobody`, who cannot read private folders.
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix / "access.log"};
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    include ledgerchat.conf;
}}
"""


def write_nginx_prefix(prefix: Path, listen_port: int, web_ports: Sequence[int]) -> Path:
    """nginx.conf, the shipped ledgerchat.conf (copied byte for byte) and its two include
    files (docs/deployment.md); returns the nginx.conf path."""
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    (prefix / "ledgerchat").mkdir(exist_ok=True)
    shutil.copyfile(SHIPPED_NGINX_CONF, prefix / "ledgerchat.conf")
    servers = "".join(
        f"server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in web_ports
    )
    (prefix / "ledgerchat" / "servers.conf").write_text(servers, encoding="utf-8")
    (prefix / "ledgerchat" / "listen.conf").write_text(
        f"listen 127.0.0.1:{listen_port};\n", encoding="utf-8"
    )
    main = prefix / "nginx.conf"
    main.write_text(nginx_main_conf(prefix), encoding="utf-8")
    return main


def nginx_command(prefix: Path, conf: Path) -> list[str]:
    return [NGINX_BINARY, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]


def check_nginx_available() -> None:
    """ClusterError unless nginx and the shipped config are there."""
    if shutil.which(NGINX_BINARY) is None:
        raise ClusterError(
            f"nginx is not installed ({NGINX_BINARY}); Debian: apt-get install nginx"
        )
    if not SHIPPED_NGINX_CONF.is_file():
        raise ClusterError(
            f"{SHIPPED_NGINX_CONF} is missing: run the bench from a checkout of the repository"
        )


def check_nginx_conf(prefix: Path, conf: Path) -> None:
    """`nginx -t` on the prefix; ClusterError with nginx's words if it refuses."""
    check_nginx_available()
    checked = subprocess.run(
        [*nginx_command(prefix, conf), "-t"],
        capture_output=True,
        text=True,
        timeout=NGINX_CHECK_TIMEOUT_S,
        check=False,
    )
    if checked.returncode != 0:
        raise ClusterError(f"nginx -t refused the config:\n{checked.stderr}")


def wait_nginx(process: subprocess.Popen[bytes], prefix: Path, url: str) -> None:
    """Until nginx answers /health (passed on to a web process) at `url`."""

    def answering() -> bool:
        if process.poll() is not None:
            error_log = (prefix / "error.log").read_text(encoding="utf-8", errors="replace")
            raise ClusterError(f"nginx exited: {error_log[-2000:]}")
        return http_ok(f"{url}/health")

    wait_until(answering, NGINX_CHECK_TIMEOUT_S, "nginx answering /health")


def sqlalchemy_postgres_url(url: str) -> str:
    """The asyncpg SQLAlchemy URL of a PostgreSQL server given as a libpq or SQLAlchemy URL."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


async def _run_admin_statement(url: str, statement: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    # CREATE/DROP DATABASE cannot run inside a transaction.
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def create_database(admin_url: str, prefix: str) -> tuple[str, str]:
    """A fresh database on the server of `admin_url` (a URL whose user may create
    databases): (its name, its SQLAlchemy URL)."""
    from sqlalchemy.exc import SQLAlchemyError

    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    url = sqlalchemy_postgres_url(admin_url)
    try:
        asyncio.run(_run_admin_statement(url, f'CREATE DATABASE "{name}"'))
    except (OSError, SQLAlchemyError) as exc:
        raise ClusterError(f"cannot create a scratch database on {admin_url}: {exc}") from None
    return name, f"{url.rsplit('/', 1)[0]}/{name}"


def drop_database(admin_url: str, name: str) -> None:
    url = sqlalchemy_postgres_url(admin_url)
    asyncio.run(_run_admin_statement(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def delete_redis_prefix(url: str, prefix: str) -> int:
    """Delete every key under `prefix`; how many were deleted."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        deleted = client.delete(*keys) if keys else 0
        assert isinstance(deleted, int)  # the synchronous client answers at once
        return deleted
    finally:
        client.close()


def check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ClusterError(f"cannot reach Redis at {url}: {exc}") from None
    finally:
        client.close()
