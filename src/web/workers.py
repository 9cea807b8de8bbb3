"""`ledgerchat serve --workers N`: a small supervisor that runs N `ledgerchat serve` processes on
consecutive ports (LEDGERCHAT_PORT .. +N-1) for a load balancer in front (deploy/).

Why separate ports rather than uvicorn's `workers` on one shared socket: the Gradio page keeps
its queue and per-session state in the memory of the process that served it, so its traffic
must be sent to one process by the load balancer (sticky), which needs each process addressable
on its own; a port per process also lets the balancer take one dead process out of rotation.

Before anything starts it refuses: N > 1 without Redis (limits would be counted per process),
N > 1 with an in-process model unless LEDGERCHAT_ALLOW_MODEL_PER_WORKER is set (each process
would load its own copy), a port in use. It keeps the signing secret once in the data
directory before the children read it, and sets up prometheus-client's multiprocess folder
(cleared at start; a process's live gauges are dropped when it exits). A child that fails
before it listens stops the whole start (exit 2); one that dies later is started again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from inference import InferenceSettings, merge_catalog
from inference.router import InferenceRouter
from web.logging import get_logger
from web.settings import Settings

log = get_logger(__name__)
POLL_S = 0.2
RESTART_BACKOFF_S = 2.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class WorkersRefused(Exception):
    """`serve --workers N` cannot run as configured; the message tells the operator why."""


def in_process_models(settings: Settings) -> list[str]:
    """The models a web process would load itself: local catalog entries whose weights are
    there (entries whose weights are not installed are listed but never load)."""
    catalog_path = Path(settings.models.catalog) if settings.models.catalog else None
    environ = settings.environ
    router = InferenceRouter(
        merge_catalog(catalog_path, environ), InferenceSettings.from_env(environ), environ
    )
    return [m.id for m in router.models() if not router.is_remote(m.id) and m.available]


def check_workers(settings: Settings, workers: int) -> None:
    """Raise WorkersRefused when `workers` processes cannot share this configuration."""
    if workers <= 1:
        return
    if not settings.redis.url:
        raise WorkersRefused(
            f"--workers {workers} needs LEDGERCHAT_REDIS_URL: without Redis each process would "
            "count rate and concurrency limits on its own (N times the configured limits)"
        )
    local = in_process_models(settings)
    if local and not settings.server.allow_model_per_worker:
        raise WorkersRefused(
            f"--workers {workers} with in-process models ({', '.join(local)}): each process "
            "would load its own copy. Serve them from one `ledgerchat engine serve` (or vLLM) "
            "with a remote catalog entry, or set LEDGERCHAT_ALLOW_MODEL_PER_WORKER=true to "
            "accept one copy per process"
        )


def metrics_dir(settings: Settings) -> Path:
    return settings.server.metrics_dir or settings.server.data_dir / "metrics"


def clear_metrics_dir(path: Path) -> None:
    """An empty folder for this run's metric files (files of an earlier run would count)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def child_command(args: argparse.Namespace, port: int) -> list[str]:
    command = [sys.executable, "-m", "web.cli", "serve", "--workers", "1", "--port", str(port)]
    for option in ("host", "db", "catalog"):
        value = getattr(args, option, None)
        if value is not None:
            command += [f"--{option}", str(value)]
    return command


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Supervisor:
    """Runs the children; `run()` returns the exit code."""

    def __init__(self, args: argparse.Namespace, settings: Settings, metrics_path: Path) -> None:
        server = settings.server
        self.args = args
        self.host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
        self.ports = [server.port + index for index in range(server.workers)]
        self.environ = {**os.environ, MULTIPROC_ENV: str(metrics_path)}
        self.metrics_path = metrics_path
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.started: set[int] = set()
        self.stopping = False

    def _spawn(self, port: int) -> None:
        child = subprocess.Popen(child_command(self.args, port), env=self.environ)
        self.children[port] = child
        log.info("worker_started", port=port, pid=child.pid)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def _exited(self, port: int, child: subprocess.Popen[bytes]) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(child.pid, str(self.metrics_path))  # type: ignore[no-untyped-call]
        log.warning("worker_exited", port=port, pid=child.pid, code=child.returncode)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for port in self.ports:
            self._spawn(port)
        failed = False
        while self.children:
            time.sleep(POLL_S)
            for port, child in list(self.children.items()):
                if port not in self.started and child.poll() is None:
                    if _listening(self.host, port):
                        self.started.add(port)
                    continue
                if child.poll() is None:
                    continue
                self._exited(port, child)
                del self.children[port]
                if self.stopping:
                    continue
                if port not in self.started:
                    print(
                        f"error: the web process for port {port} stopped before it listened "
                        "(see its error above); stopping the others",
                        file=sys.stderr,
                    )
                    failed = True
                    self._stop(signal.SIGTERM, None)
                    continue
                time.sleep(RESTART_BACKOFF_S)
                self.started.discard(port)
                self._spawn(port)
        return 2 if failed else 0
