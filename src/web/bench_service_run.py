"""One `bench service --workers` run (`bench_workers.py` drives it): the engine server, started
once, and for one number of web processes the service around it (scratch database,
`ledgerchat serve --workers N`, nginx), the bench users, the warm-up and the load at each user
count, with the server-side billing time of every chat read from the web processes' log."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from web.bench_cluster import (
    ClusterError,
    ProcessGroups,
    check_nginx_conf,
    check_redis,
    create_database,
    delete_redis_prefix,
    drop_database,
    free_port_block,
    http_ok,
    nginx_command,
    wait_nginx,
    wait_until,
    write_nginx_prefix,
)
from web.bench_load import LoadResult, bench_user, load_client, run_load, stream_chat
from web.bench_remote import BENCH_PRICE
from web.bench_report import run_record
from web.commands import free_port

ENGINE_START_TIMEOUT_S = 1800.0
"""The first start may convert the bundled GGUF (minutes on a busy machine)."""
WEB_START_TIMEOUT_S = 300.0
KEY_ENV = "LEDGERCHAT_ENGINE_API_KEY"
WARM_UP_TOKENS = 8
LOG_WAIT_S = 30.0
BENCH_CREDITS = 1_000_000
UNLIMITED_PER_MINUTE = "1000000"
LOG_TAIL_CHARS = 3000


@dataclass
class RunOptions:
    workers: list[int]
    users: list[int]
    model: str
    engine_catalog: Path | None
    max_tokens: int
    duration_s: float | None
    requests: int | None
    postgres: str
    redis_url: str


@dataclass
class ScratchState:
    """What a run made and must undo."""

    scratch: Path
    processes: ProcessGroups
    postgres: str
    redis_url: str
    redis_prefix: str
    keep_dir: Path | None
    databases: list[str] = field(default_factory=list)
    redis_used: bool = False


def _tail(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return ""


def _wait_alive_until(
    process: subprocess.Popen[bytes], log_path: Path, url: str, timeout_s: float, what: str
) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise ClusterError(f"{what} exited with {process.returncode}:\n{_tail(log_path)}")
        return http_ok(url)

    wait_until(ready, timeout_s, what)


@dataclass
class Engine:
    """`ledgerchat engine serve --model M` on a loopback port with a random bearer secret."""

    url: str
    api_key: str
    model: str

    @classmethod
    def start(cls, state: ScratchState, options: RunOptions) -> Engine:
        port = free_port()
        api_key = secrets.token_urlsafe(32)
        env = {k: v for k, v in os.environ.items() if k != f"{KEY_ENV}_FILE"}
        env[KEY_ENV] = api_key
        # Every user's chat must fit the engine's queue (unless the operator chose a limit).
        env.setdefault("LEDGERCHAT_INFERENCE_QUEUE_LIMIT", str(max(32, 2 * max(options.users))))
        command = [sys.executable, "-m", "web.cli", "engine", "serve", "--port", str(port)]
        command += ["--model", options.model]
        if options.engine_catalog is not None:
            command += ["--catalog", str(options.engine_catalog)]
        log_path = state.scratch / "engine.log"
        _progress(f"starting the engine server ({options.model}); log {log_path}")
        process = state.processes.start(command, env, log_path)
        url = f"http://127.0.0.1:{port}"
        _wait_alive_until(
            process, log_path, f"{url}/health", ENGINE_START_TIMEOUT_S, "the engine server"
        )
        return cls(url=url, api_key=api_key, model=options.model)


def web_catalog(engine: Engine, options: RunOptions, also_remote: list[str]) -> str:
    """The bench model as a remote entry on the engine, with a price; `also_remote`: other
    catalog entries a web process would otherwise load itself, pointed at the same engine."""
    concurrent = max(options.users) * 2
    source = (
        f'{{ kind = "remote", base_urls = ["{engine.url}"], model = "{engine.model}", '
        f'api_key_env = "{KEY_ENV}", read_timeout_s = 600, '
        f"max_concurrent_per_url = {concurrent} }}"
    )
    entries = [
        f'[[models]]\nid = "{model_id}"\ndisplay_name = "{model_id} (bench: engine server)"\n'
        f"source = {source}\nmax_new_tokens_cap = {max(options.max_tokens, 16)}\n"
        for model_id in [engine.model, *also_remote]
    ]
    return "\n".join(entries) + f'\n[prices."{engine.model}"]\n{BENCH_PRICE}\n'


def write_web_catalog(folder: Path, engine: Engine, options: RunOptions) -> Path:
    """The catalog of the web processes: the bench model and every bundled local entry as
    remote entries on the engine, so that no web process loads a model (and fallbacks between
    bundled entries stay remote to remote)."""
    from inference import merge_catalog

    bundled_local = [
        entry.id
        for entry in merge_catalog(None, {})
        if not entry.source.is_remote and entry.id != engine.model
    ]
    path = folder / "web-catalog.toml"
    path.write_text(web_catalog(engine, options, bundled_local), encoding="utf-8")
    return path


def web_environ(
    folder: Path, database_url: str, engine: Engine, nginx_port: int, redis: tuple[str, str] | None
) -> dict[str, str]:
    """The web processes' settings: the operator's LEDGERCHAT_* are left out (the bench is a
    scratch service); open registration with a large grant, limits out of the way (every
    user comes from 127.0.0.1), cheap password hashing (sign-in is not what is measured), the
    UI off, info logs (their `chat_settled` lines carry the billing time)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERCHAT_")}
    env = {
        **base,
        "LEDGERCHAT_DATABASE_URL": database_url,
        "LEDGERCHAT_DATA_DIR": str(folder / "data"),
        "LEDGERCHAT_CHAT_DEFAULT_MODEL": engine.model,
        KEY_ENV: engine.api_key,
        "LEDGERCHAT_UI_ENABLED": "false",
        "LEDGERCHAT_LOG_LEVEL": "info",
        "LEDGERCHAT_TRUSTED_PROXIES": "127.0.0.1,::1",
        "LEDGERCHAT_PUBLIC_URL": f"http://127.0.0.1:{nginx_port}",
        "LEDGERCHAT_AUTH_REGISTRATION_MODE": "open",
        "LEDGERCHAT_AUTH_SIGNUPS_PER_ADDRESS_PER_HOUR": "0",
        "LEDGERCHAT_AUTH_ARGON2_TIME_COST": "1",
        "LEDGERCHAT_AUTH_ARGON2_MEMORY_COST_KIB": "1024",
        "LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS": str(BENCH_CREDITS),
        "LEDGERCHAT_RATE_LIMIT_PER_ADDRESS_PER_MINUTE": UNLIMITED_PER_MINUTE,
        "LEDGERCHAT_RATE_LIMIT_PER_USER_PER_MINUTE": UNLIMITED_PER_MINUTE,
        "LEDGERCHAT_RATE_LIMIT_CHAT_PER_USER_PER_MINUTE": UNLIMITED_PER_MINUTE,
    }
    if redis is not None:
        env["LEDGERCHAT_REDIS_URL"], env["LEDGERCHAT_REDIS_KEY_PREFIX"] = redis
    return env


def billing_ms_by_request(log_path: Path) -> dict[str, float]:
    """`billing_ms` of every `chat_settled` line the web processes logged (JSON lines)."""
    found: dict[str, float] = {}
    with log_path.open(encoding="utf-8", errors="replace") as log_file:
        for line in log_file:
            if '"chat_settled"' not in line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == "chat_settled" and "billing_ms" in record:
                found[str(record.get("request_id"))] = float(record["billing_ms"])
    return found


def billing_samples(log_path: Path, load: LoadResult) -> list[float]:
    """The billing time of each chat of `load` (settled chats log before their `done` event;
    the wait only covers a slow file system)."""
    wanted = {o.request_id for o in load.completed if o.request_id}
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        logged = billing_ms_by_request(log_path)
        if wanted <= set(logged) or time.monotonic() > deadline:
            return [logged[request_id] for request_id in wanted if request_id in logged]
        time.sleep(0.5)


async def _drive(
    url: str, options: RunOptions, workers: int, log_path: Path
) -> list[dict[str, Any]]:
    async with load_client(url, max(options.users)) as client:
        _progress(f"{workers} web process(es): registering {max(options.users)} users")
        users = [await bench_user(client, f"bench{index}") for index in range(max(options.users))]
        warm = await asyncio.gather(
            *(
                stream_chat(client, users[i % len(users)], options.model, WARM_UP_TOKENS)
                for i in range(2 * workers)
            )
        )
        failed = [o.error or o.status for o in warm if o.status != 200 or o.error]
        if failed:
            raise ClusterError(f"the warm-up chats failed: {failed[:3]}\n{_tail(log_path)}")
        records = []
        for count in options.users:
            _progress(f"{workers} web process(es), {count} users: streaming")
            load = await run_load(
                client,
                users[:count],
                options.model,
                options.max_tokens,
                duration_s=options.duration_s,
                requests=options.requests,
            )
            samples = await asyncio.to_thread(billing_samples, log_path, load)
            records.append(run_record(workers, load, samples))
            _progress(
                f"{workers} web process(es), {count} users: {len(load.completed)} chats, "
                f"{load.completion_tokens} tokens in {load.wall_s:.1f} s"
            )
        return records


def bench_one_worker_count(
    state: ScratchState, options: RunOptions, engine: Engine, workers: int
) -> list[dict[str, Any]]:
    """Start the service with `workers` web processes, measure, stop it (whatever happens)."""
    folder = state.scratch / f"workers-{workers}"
    folder.mkdir(parents=True, exist_ok=True)
    name, database_url = create_database(state.postgres, "ledgerchat_bench_")
    state.databases.append(name)
    redis = None
    if workers > 1:
        check_redis(state.redis_url)
        state.redis_used = True
        redis = (state.redis_url, state.redis_prefix)
    base_port = free_port_block(workers)
    nginx_port = free_port()
    env = web_environ(folder, database_url, engine, nginx_port, redis)
    env["LEDGERCHAT_CATALOG"] = str(write_web_catalog(folder, engine, options))
    log_path = folder / "web.log"
    started = []
    try:
        command = [sys.executable, "-m", "web.cli", "serve", "--workers", str(workers)]
        supervisor = state.processes.start([*command, "--port", str(base_port)], env, log_path)
        started.append(supervisor)
        ports = [base_port + index for index in range(workers)]
        for port in ports:
            _wait_alive_until(
                supervisor,
                log_path,
                f"http://127.0.0.1:{port}/ready",
                WEB_START_TIMEOUT_S,
                f"`ledgerchat serve --workers {workers}` (port {port} ready)",
            )
        prefix = folder / "nginx"
        conf = write_nginx_prefix(prefix, nginx_port, ports)
        check_nginx_conf(prefix, conf)
        nginx = state.processes.start(nginx_command(prefix, conf), os.environ, prefix / "out.log")
        started.append(nginx)
        url = f"http://127.0.0.1:{nginx_port}"
        wait_nginx(nginx, prefix, url)
        return asyncio.run(_drive(url, options, workers, log_path))
    finally:
        for process in reversed(started):
            state.processes.stop(process)
        drop_database(state.postgres, name)
        state.databases.remove(name)
        if redis is not None:
            delete_redis_prefix(state.redis_url, state.redis_prefix)


def _progress(message: str) -> None:
    print(f"bench service: {message}", file=sys.stderr, flush=True)
