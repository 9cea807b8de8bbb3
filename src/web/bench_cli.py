"""`ledgerchat bench service`: throughput and billing overhead of the whole service.

Runs the real app under uvicorn on a free port with a scratch SQLite database (or `--db`) and
measures, in one run:
- `engine_tok_s` and `sse_tok_s`: the same greedy request run directly on the engine and
  through POST /api/chat (Server-Sent Events, billed), alternating, median of `--repeats`;
  tokens / wall time from the call to the final event in both cases. `sse_to_engine_ratio`
  is the median of the per-pair ratios: each SSE run is compared with the engine run right
  before it, so a machine that speeds up or slows down during the run does not skew it;
- `billing_overhead_ms_p50` / `_p99`: per chat request, the time spent on the idempotency
  claim, the hold, the capture, the balance read and the history writes (measured inside the
  chat service over `--billing-requests` one-token chats);
- `aggregate_tok_s_8_users`: 8 users chatting at once through HTTP, total completion tokens
  / wall time.
Prints a table, then one JSON object as the last line.

With `--engine-url URL` the model is a remote engine (vLLM, `ledgerchat engine serve`, any
OpenAI-compatible server; `bench_remote.py`): the direct measure is then the same request sent
straight to the upstream, and `engine_tok_s` is the upstream's tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from inference import ChatMessage, Finished, GenerationRequest, SamplingParams
from web.bench_remote import (
    BENCH_MODEL_ID,
    BenchSetupError,
    api_headers,
    served_model,
    upstream_root,
    upstream_stream,
    write_bench_catalog,
)
from web.bench_workers import add_workers_options, bench_service_workers
from web.commands import free_port
from web.domain.admin.services import INTERNAL_ADMIN
from web.services import Services
from web.settings import load_settings

BENCH_PASSWORD = "bench password 1"
BENCH_PROMPT = "Write a short story about a lighthouse keeper and the sea."
CONCURRENT_USERS = 8
BENCH_CREDITS = 1_000_000


def register_bench(bench_subparsers: Any) -> None:
    parser = bench_subparsers.add_parser(
        "service",
        help="SSE vs engine tokens/s, billing overhead, 8-user aggregate through HTTP; with "
        "--workers: several web processes behind nginx",
        description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--model", help="model id (default: the configured default model)")
    parser.add_argument("--catalog", type=Path, help="catalog file (LEDGERCHAT_CATALOG)")
    parser.add_argument("--db", help="database URL (default: a scratch SQLite file)")
    parser.add_argument("--max-tokens", type=int, default=128, help="completion tokens per stream")
    parser.add_argument("--repeats", type=int, default=5, help="single-stream runs of each kind")
    parser.add_argument("--billing-requests", type=int, default=50, help="one-token chats timed")
    parser.add_argument(
        "--engine-url",
        help="bench a remote OpenAI-compatible engine at this URL (with or without /v1)",
    )
    parser.add_argument("--engine-model", help="the upstream's model name (default: its first)")
    parser.add_argument(
        "--engine-api-key-env", help="environment variable holding the upstream's bearer key"
    )
    add_workers_options(parser)
    parser.set_defaults(handler=bench_service)


def bench_service(args: argparse.Namespace) -> int:
    if args.workers is not None:
        return bench_service_workers(args)
    for name in ("max_tokens", "repeats", "billing_requests"):
        if getattr(args, name) < 1:
            print(f"ledgerchat bench service: --{name.replace('_', '-')} must be >= 1")
            return 2
    with tempfile.TemporaryDirectory(prefix="ledgerchat-bench-") as scratch:
        try:
            results = asyncio.run(_run(args, Path(scratch)))
        except BenchSetupError as exc:
            print(f"ledgerchat bench service: {exc}", file=sys.stderr)
            return 2
    _print_table(results)
    print(json.dumps(results, sort_keys=True))
    return 0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def _run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import uvicorn

    from web.app import create_app

    settings = load_settings()
    remote: dict[str, Any] = {}
    if args.engine_url:
        root = upstream_root(args.engine_url)
        headers = api_headers(args.engine_api_key_env)
        upstream_model = await asyncio.to_thread(served_model, root, headers, args.engine_model)
        args.catalog = write_bench_catalog(
            scratch, root, upstream_model, args.engine_api_key_env, args.max_tokens
        )
        args.model = BENCH_MODEL_ID
        remote = {"root": root, "headers": headers, "model": upstream_model}
    settings = settings.model_copy(
        update={
            "database": settings.database.model_copy(
                update={"url": args.db or f"sqlite+aiosqlite:///{scratch / 'bench.db'}"}
            ),
            "server": settings.server.model_copy(
                update={"ui_enabled": False, "log_level": "warning"}
            ),
            "models": settings.models.model_copy(
                update={"catalog": str(args.catalog) if args.catalog else settings.models.catalog}
            ),
            # Every bench user registers from 127.0.0.1 into a scratch database.
            "auth": settings.auth.model_copy(
                update={"registration_mode": "open", "signups_per_address_per_hour": 0}
            ),
            "chat": settings.chat.model_copy(
                update={"max_max_tokens": max(args.max_tokens, settings.chat.max_max_tokens)}
            ),
            "rate_limit": settings.rate_limit.model_copy(
                update={
                    "per_address_per_minute": 1_000_000,
                    "per_user_per_minute": 1_000_000,
                    "chat_per_user_per_minute": 1_000_000,
                }
            ),
        }
    )
    model_id = args.model or settings.chat.default_model
    app = create_app(settings)
    services: Services = app.state.services
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.05)
        load_started = time.perf_counter()
        await services.engine.load(model_id)
        load_s = time.perf_counter() - load_started
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            users = [
                await _bench_user(client, services, f"bench{i}") for i in range(CONCURRENT_USERS)
            ]
            if remote:

                async def direct(max_tokens: int) -> tuple[int, float]:
                    return await upstream_stream(
                        client,
                        remote["root"],
                        remote["model"],
                        remote["headers"],
                        BENCH_PROMPT,
                        max_tokens,
                    )
            else:

                async def direct(max_tokens: int) -> tuple[int, float]:
                    return await _engine_stream(services, model_id, max_tokens)

            results = await _measure(args, services, client, users, model_id, direct)
        results["model"] = model_id
        results["engine"] = "remote" if remote else "local"
        if remote:
            results["engine_url"] = remote["root"]
            results["engine_model"] = remote["model"]
        results["model_load_s"] = round(load_s, 2)
        return results
    finally:
        server.should_exit = True
        await serving


async def _bench_user(client: httpx.AsyncClient, services: Services, name: str) -> dict[str, str]:
    await client.post(
        "/api/auth/register",
        json={"username": name, "email": f"{name}@bench.invalid", "password": BENCH_PASSWORD},
    )
    user = await services.accounts.find_user(name)
    await services.admin.top_up(
        INTERNAL_ADMIN, user.id, BENCH_CREDITS, idempotency_key=f"bench-{name}", note="bench"
    )
    tokens = (
        await client.post("/api/auth/login", json={"username": name, "password": BENCH_PASSWORD})
    ).json()
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def _engine_stream(services: Services, model_id: str, max_tokens: int) -> tuple[int, float]:
    request = GenerationRequest(
        model_id=model_id,
        messages=(ChatMessage(role="user", content=BENCH_PROMPT),),
        sampling=SamplingParams(temperature=0.0, max_new_tokens=max_tokens),
    )
    started = time.perf_counter()
    tokens = 0
    async for event in services.engine.stream(request):
        if isinstance(event, Finished):
            tokens = event.completion_tokens
    return tokens, time.perf_counter() - started


async def _sse_stream(
    client: httpx.AsyncClient, headers: dict[str, str], model_id: str, max_tokens: int
) -> tuple[int, float]:
    body = {
        "message": BENCH_PROMPT,
        "model": model_id,
        "sampling": {"temperature": 0.0, "max_tokens": max_tokens},
    }
    started = time.perf_counter()
    done: dict[str, Any] = {}
    async with client.stream("POST", "/api/chat", json=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"/api/chat answered {response.status_code}: {response.text}")
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "done":
                done = json.loads(line[5:])
    return int(done.get("completion_tokens", 0)), time.perf_counter() - started


async def _measure(
    args: argparse.Namespace,
    services: Services,
    client: httpx.AsyncClient,
    users: list[dict[str, str]],
    model_id: str,
    direct: Callable[[int], Awaitable[tuple[int, float]]],
) -> dict[str, Any]:
    # Warm-up: the first generation pays one-off costs (allocations, kernels).
    _progress("warm-up")
    await direct(min(8, args.max_tokens))
    await _sse_stream(client, users[0], model_id, min(8, args.max_tokens))
    engine_rates: list[float] = []
    sse_rates: list[float] = []
    for repeat in range(args.repeats):
        tokens, seconds = await direct(args.max_tokens)
        engine_rates.append(tokens / seconds)
        tokens, seconds = await _sse_stream(client, users[0], model_id, args.max_tokens)
        sse_rates.append(tokens / seconds)
        _progress(
            f"single stream {repeat + 1}/{args.repeats}: engine {engine_rates[-1]:.1f} tok/s, "
            f"SSE {sse_rates[-1]:.1f} tok/s"
        )

    services.chat.billing_overhead_ms.clear()
    for _ in range(args.billing_requests):
        await _sse_stream(client, users[0], model_id, 1)
    billing = list(services.chat.billing_overhead_ms)
    _progress(f"billing overhead: {len(billing)} one-token chats")

    started = time.perf_counter()
    outcomes = await asyncio.gather(
        *(_sse_stream(client, headers, model_id, args.max_tokens) for headers in users)
    )
    aggregate_s = time.perf_counter() - started
    aggregate_tokens = sum(tokens for tokens, _ in outcomes)
    _progress(f"{CONCURRENT_USERS} users: {aggregate_tokens} tokens in {aggregate_s:.1f} s")

    pair_ratios = [sse / engine for sse, engine in zip(sse_rates, engine_rates, strict=True)]
    return {
        "engine_tok_s": round(statistics.median(engine_rates), 2),
        "sse_tok_s": round(statistics.median(sse_rates), 2),
        "sse_to_engine_ratio": round(statistics.median(pair_ratios), 3),
        "sse_to_engine_ratio_min": round(min(pair_ratios), 3),
        "sse_to_engine_ratio_max": round(max(pair_ratios), 3),
        "billing_overhead_ms_p50": round(_percentile(billing, 0.5), 2),
        "billing_overhead_ms_p99": round(_percentile(billing, 0.99), 2),
        "billing_samples": len(billing),
        "aggregate_tok_s_8_users": round(aggregate_tokens / aggregate_s, 2),
        "aggregate_tokens_8_users": aggregate_tokens,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "database": "postgresql" if (args.db or "").startswith("postgresql") else "sqlite",
    }


def _progress(message: str) -> None:
    print(f"bench service: {message}", file=sys.stderr, flush=True)


def _print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ledgerchat bench service ({results['model']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        (
            "upstream tokens/s (single stream, direct)"
            if results["engine"] == "remote"
            else "engine tokens/s (single stream, direct)",
            results["engine_tok_s"],
        ),
        ("SSE tokens/s (same request via /api/chat)", results["sse_tok_s"]),
        ("SSE / engine (median of pairs)", results["sse_to_engine_ratio"]),
        (
            "SSE / engine, lowest and highest pair",
            f"{results['sse_to_engine_ratio_min']} / {results['sse_to_engine_ratio_max']}",
        ),
        ("billing overhead p50 (ms per chat)", results["billing_overhead_ms_p50"]),
        ("billing overhead p99 (ms per chat)", results["billing_overhead_ms_p99"]),
        ("aggregate tokens/s, 8 users via HTTP", results["aggregate_tok_s_8_users"]),
        ("model load (s)", results["model_load_s"]),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)
