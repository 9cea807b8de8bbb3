"""A private `redis-server` for the multi-process tests: a free loopback port, no persistence,
its own process group, stoppable and restartable on the same port (the Redis-down test)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.multiproc.cluster import wait_until
from tests.remote.upstreams import free_port
from web.bench_cluster import spawn, stop_process

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    workdir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answering(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.process = spawn(command, {}, self.workdir / "redis.log")
        wait_until(self.answering, 60, f"redis-server on {self.port} answering PING")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        wait_until(lambda: not self.answering(), 30, f"redis-server on {self.port} gone")


def start_redis(workdir: Path) -> RedisServer:
    server = RedisServer(workdir, free_port())
    server.start()
    return server
