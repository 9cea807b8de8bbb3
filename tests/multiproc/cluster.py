"""The multi-process service as an operator runs it, for tests/multiproc: one `ledgerchat
engine serve` (the session's tiny-model upstream), N `ledgerchat serve` processes on one fresh
PostgreSQL database (their catalog names the engine as a remote model), and nginx in front with
deploy/nginx/ledgerchat.conf as shipped (the test writes only its two documented include files,
`ledgerchat/servers.conf` and `ledgerchat/listen.conf`, and a minimal nginx.conf around it:
`web.bench_cluster`, which `ledgerchat bench service --workers` uses the same way).

Every child runs in its own process group and is stopped (SIGTERM, then SIGKILL) by `stop()`;
every wait polls with a generous timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.remote.front import FAST_HASHING, KEY_ENV, REMOTE_MODEL, remote_catalog
from tests.remote.upstreams import OFFLINE_ENV, Upstream, free_port
from web import bench_cluster
from web.bench_cluster import (
    NGINX_BINARY,
    STOP_TIMEOUT_S,
    ClusterError,
    check_nginx_conf,
    nginx_command,
    signal_group,
    spawn,
    stop_process,
    wait_nginx,
    write_nginx_prefix,
)

REPO = Path(__file__).resolve().parents[2]
NGINX = NGINX_BINARY
POSTGRES_ADMIN_DSN = os.environ.get(
    "LEDGERCHAT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
START_TIMEOUT_S = 180.0
JWT_SECRET = "multiproc-test-secret-long-enough-for-hs256"
UPSTREAM_HEADER = "x-ledgerchat-upstream"
METRICS_TOKEN = "multiproc-test-metrics-token"
LONG_REPLY_TOKENS = 400
"""A reply long enough (seconds of decoding) that a kill lands mid-stream."""


ClusterFailed = ClusterError
"""A child process exited or did not become ready in time."""


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s} s")
        time.sleep(0.2)


@dataclass
class WebProcess:
    """One `ledgerchat serve` on a loopback port."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """How nginx names it in X-Ledgerchat-Upstream."""
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL the process group: no shutdown, holds stay open."""
        signal_group(self.process, signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT_S)


def create_database() -> tuple[str, str]:
    """A fresh PostgreSQL database: (its name, its SQLAlchemy asyncpg URL)."""
    return bench_cluster.create_database(POSTGRES_ADMIN_DSN, "ledgerchat_mp_")


def drop_database(name: str) -> None:
    bench_cluster.drop_database(POSTGRES_ADMIN_DSN, name)


@dataclass
class Cluster:
    """The running service; `url` is nginx's."""

    workdir: Path
    engine: Upstream
    database_url: str
    environ: dict[str, str]
    nginx_port: int
    webs: list[WebProcess] = field(default_factory=list)
    nginx: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def client(self, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=120, **kwargs)  # type: ignore[arg-type]

    def web_by_address(self, address: str) -> WebProcess:
        return next(web for web in self.webs if web.address == address)

    def start_web(self, port: int | None = None) -> WebProcess:
        port = port or free_port()
        log_path = self.workdir / f"web-{port}.log"
        command = [sys.executable, "-m", "web.cli", "serve", "--port", str(port)]
        web = WebProcess(port, spawn(command, self.environ, log_path), log_path)
        return web

    def wait_ready(self, web: WebProcess, timeout_s: float = START_TIMEOUT_S) -> None:
        def ready() -> bool:
            if not web.alive():
                raise ClusterFailed(f"web process {web.port} exited:\n{web.log_text()[-4000:]}")
            try:
                return httpx.get(f"{web.url}/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s, f"web process {web.port} ready")

    def start_nginx(self) -> None:
        prefix = self.workdir / "nginx"
        conf = write_nginx_prefix(prefix, self.nginx_port, [web.port for web in self.webs])
        check_nginx_conf(prefix, conf)
        self.nginx = spawn(nginx_command(prefix, conf), os.environ, prefix / "nginx.out")
        wait_nginx(self.nginx, prefix, self.url)

    def stop(self) -> None:
        if self.nginx is not None:
            stop_process(self.nginx)
        for web in self.webs:
            stop_process(web.process)


def web_environ(
    workdir: Path,
    engine: Upstream,
    database_url: str,
    nginx_port: int,
    redis_url: str,
    **overrides: str,
) -> dict[str, str]:
    """What every web process shares: database, Redis (with a key prefix of its own), catalog,
    signing secret, proxy settings, and the prometheus-client multiprocess folder (as `serve
    --workers` sets it for its children)."""
    metrics = workdir / "metrics"
    metrics.mkdir(parents=True, exist_ok=True)
    catalog = workdir / "catalog.toml"
    catalog.write_text(
        remote_catalog([engine.base_url], engine.model, max_new_tokens_cap=LONG_REPLY_TOKENS),
        encoding="utf-8",
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERCHAT_")}
    src = str(REPO / "src")
    pythonpath = os.pathsep.join(p for p in (src, str(REPO), base.get("PYTHONPATH", "")) if p)
    return {
        **base,
        **OFFLINE_ENV,
        "PYTHONPATH": pythonpath,
        "LEDGERCHAT_DATABASE_URL": database_url,
        "LEDGERCHAT_REDIS_URL": redis_url,
        "LEDGERCHAT_REDIS_KEY_PREFIX": f"ledgerchat-test-{uuid.uuid4().hex[:8]}:",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "LEDGERCHAT_DATA_DIR": str(workdir / "data"),
        "LEDGERCHAT_CATALOG": str(catalog),
        "LEDGERCHAT_CHAT_DEFAULT_MODEL": REMOTE_MODEL,
        "LEDGERCHAT_CHAT_DEFAULT_MAX_TOKENS": "8",
        "LEDGERCHAT_INFERENCE_CACHE_DIR": str(workdir / "model-cache"),
        "LEDGERCHAT_AUTH_JWT_SECRET": JWT_SECRET,
        "LEDGERCHAT_LOG_LEVEL": "warning",
        "LEDGERCHAT_AUTH_SIGNUPS_PER_ADDRESS_PER_HOUR": "0",
        "LEDGERCHAT_UI_ENABLED": "false",
        "LEDGERCHAT_TRUSTED_PROXIES": "127.0.0.1,::1",
        "LEDGERCHAT_METRICS_TOKEN": METRICS_TOKEN,
        "LEDGERCHAT_PUBLIC_URL": f"http://127.0.0.1:{nginx_port}",
        KEY_ENV: engine.api_key,
        **FAST_HASHING,
        **overrides,
    }


def start_cluster(
    workdir: Path,
    engine: Upstream,
    database_url: str,
    redis_url: str,
    workers: int,
    **overrides: str,
) -> Cluster:
    """Migrate with the first process, then start the others, then nginx. The caller stops it."""
    workdir.mkdir(parents=True, exist_ok=True)
    nginx_port = free_port()
    environ = web_environ(workdir, engine, database_url, nginx_port, redis_url, **overrides)
    cluster = Cluster(workdir, engine, database_url, environ, nginx_port)
    try:
        first = cluster.start_web()
        cluster.webs.append(first)
        cluster.wait_ready(first)  # the schema exists before the others start
        others = [cluster.start_web() for _ in range(workers - 1)]
        cluster.webs.extend(others)
        for web in others:
            cluster.wait_ready(web)
        cluster.start_nginx()
    except BaseException:
        cluster.stop()
        raise
    return cluster
