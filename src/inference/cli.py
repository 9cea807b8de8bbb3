"""`ledgerchat models list|pull`, `ledgerchat bench inference` and `ledgerchat eval replies`.
Exit codes: 0 ok,
2 usage or environment errors (unknown model, weights unavailable, offline pull)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from inference.catalog import DTYPES, CatalogError, load_catalog
from inference.errors import InferenceError
from inference.settings import InferenceSettings

DEFAULT_BENCH_MODEL = "gemma-3-270m"
MAX_BENCH_NEW_TOKENS = 2048
MAX_BENCH_ROUNDS = 10


def register(subparsers: Any) -> None:
    models = subparsers.add_parser("models", help="list or fetch the catalog's models")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = models_sub.add_parser("list", help="each model, availability, quantization, memory")
    _add_catalog_argument(listing)
    listing.add_argument("--load", action="store_true", help="load available models to show memory")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=models_list)
    pull = models_sub.add_parser(
        "pull",
        help="fetch a model's weights (hf_repo: download to the HF cache; GGUF: convert once)",
    )
    _add_catalog_argument(pull)
    pull.add_argument("model_id", metavar="ID")
    pull.set_defaults(handler=models_pull)


def register_bench(bench_subparsers: Any) -> None:
    bench = bench_subparsers.add_parser(
        "inference", help="load times, tokens/s at 1..8 streams, time to first token"
    )
    _add_catalog_argument(bench)
    bench.add_argument("--model", default=DEFAULT_BENCH_MODEL, help="catalog id to measure")
    bench.add_argument("--max-new-tokens", type=int, default=128, help="tokens per stream")
    bench.add_argument("--streams", default="1,2,4,8", help="concurrency levels, e.g. 1,2,4,8")
    bench.add_argument("--rounds", type=int, default=2, help="repetitions per level (median)")
    bench.add_argument("--dtype", choices=DTYPES, help="override the catalog entry's dtype")
    bench.add_argument(
        "--skip-cold", action="store_true", help="do not time a conversion into an empty cache"
    )
    bench.add_argument(
        "--peer-url",
        metavar="URL",
        help="also load-test this OpenAI-compatible server (e.g. vLLM) in the same run",
    )
    bench.add_argument("--peer-model", help="model name at the peer (default: the first served)")
    bench.add_argument(
        "--peer-api-key-env", metavar="NAME", help="environment variable holding the peer's key"
    )
    bench.add_argument(
        "--peer-pid",
        type=int,
        metavar="PID",
        help="the peer server's process: stopped (with its children) during the engine's rounds",
    )
    bench.set_defaults(handler=bench_inference)


def register_eval(eval_subparsers: Any) -> None:
    replies = eval_subparsers.add_parser(
        "replies", help="share of greedy replies that end by themselves, loop share, median length"
    )
    _add_catalog_argument(replies)
    replies.add_argument("--model", default=DEFAULT_BENCH_MODEL, help="catalog id to evaluate")
    replies.add_argument(
        "--prompts", type=Path, help="prompt file, one per line (default: the shipped list)"
    )
    replies.add_argument(
        "--max-new-tokens", type=int, help="reply limit (default: the model's default length)"
    )
    replies.add_argument("--show", action="store_true", help="print every reply in full")
    replies.set_defaults(handler=eval_replies)


def _add_catalog_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalog", type=Path, help="operator catalog file (default: $LEDGERCHAT_CATALOG)"
    )


def models_list(args: argparse.Namespace) -> int:
    """Each model; a remote one's URLs are probed now (reachable, latency)."""
    import os

    from inference.router import InferenceRouter

    async def statuses() -> tuple[list[Any], dict[str, list[Any]]]:
        # Built in the loop that uses it: the remote backend's HTTP client belongs to it.
        router = InferenceRouter(catalog, settings, os.environ)
        try:
            if args.load:
                for entry in catalog:
                    if router.is_remote(entry.id):
                        continue
                    try:
                        await router.load(entry.id)
                    except InferenceError as exc:
                        print(f"{entry.id}: {exc}", file=sys.stderr)
            urls: dict[str, list[Any]] = {}
            for health in await router.remote_health():
                urls.setdefault(health.model_id, []).append(health)
            return router.models(), urls
        finally:
            await router.close()

    try:
        catalog = load_catalog(args.catalog)
        settings = InferenceSettings.from_env()
        models, remote_urls = asyncio.run(statuses())
    except (CatalogError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        listed = [_status_json(model, remote_urls.get(model.id)) for model in models]
        print(json.dumps(listed, indent=2))
        return 0
    header = ("ID", "AVAILABLE", "QUANT", "MEMORY", "NOTE")
    rows = [header]
    for model in models:
        rows.append(
            (
                model.id,
                "yes" if model.available else "no",
                model.quantization,
                f"{model.memory_bytes / 2**20:.0f} MiB" if model.memory_bytes else "-",
                "" if model.available else f"{model.unavailable_reason}; {model.how_to_provide}",
            )
        )
    widths = [max(len(row[index]) for row in rows) for index in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]).rstrip())
    for model_id, healths in remote_urls.items():
        for health in healths:
            state = (
                f"reachable, {health.latency_ms:.0f} ms"
                if health.reachable
                else f"unreachable: {health.error}"
            )
            print(f"{model_id}: remote {health.url} {state}")
    return 0


def _status_json(model: Any, remote_urls: list[Any] | None = None) -> dict[str, Any]:
    listed = {
        "id": model.id,
        "display_name": model.display_name,
        "available": model.available,
        "unavailable_reason": model.unavailable_reason,
        "how_to_provide": model.how_to_provide,
        "quantization": model.quantization,
        "loaded": model.loaded,
        "memory_bytes": model.memory_bytes,
        "fallback_model_id": model.fallback_model_id,
    }
    if remote_urls is not None:
        listed["remote_urls"] = [
            {
                "url": health.url,
                "reachable": health.reachable,
                "latency_ms": None if health.latency_ms is None else round(health.latency_ms, 1),
                "error": health.error,
            }
            for health in remote_urls
        ]
    return listed


def models_pull(args: argparse.Namespace) -> int:
    from inference.gguf_cache import ensure_converted
    from inference.sources import pull, resolve_weights

    try:
        catalog = load_catalog(args.catalog)
        settings = InferenceSettings.from_env()
        entry = catalog.get(args.model_id)
        if entry.source.kind == "hf_repo":
            path = pull(entry, settings)
        else:
            path = resolve_weights(entry, settings)
            if path.suffix == ".gguf":
                path = ensure_converted(path, settings.cache_dir, show_progress=True)
    except (CatalogError, ValueError, InferenceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{entry.id}: ready at {path}")
    return 0


def bench_inference(args: argparse.Namespace) -> int:
    from inference.bench import run_benchmark
    from inference.bench_peer import PeerError, connect_peer
    from inference.peer_pause import PeerPause, PeerPauseError

    try:
        levels = tuple(sorted({int(part) for part in args.streams.split(",") if part.strip()}))
    except ValueError:
        print(f"error: --streams {args.streams!r} must be integers like 1,2,4,8", file=sys.stderr)
        return 2
    if not levels or levels[0] < 1 or levels[-1] > 64:
        print("error: --streams levels must be between 1 and 64", file=sys.stderr)
        return 2
    if 1 not in levels:
        levels = (1, *levels)  # the single-stream rate is the baseline of every ratio
    if not 1 <= args.max_new_tokens <= MAX_BENCH_NEW_TOKENS:
        print(f"error: --max-new-tokens must be 1..{MAX_BENCH_NEW_TOKENS}", file=sys.stderr)
        return 2
    if not 1 <= args.rounds <= MAX_BENCH_ROUNDS:
        print(f"error: --rounds must be 1..{MAX_BENCH_ROUNDS}", file=sys.stderr)
        return 2
    peer_pause: PeerPause | None = None
    try:
        catalog = load_catalog(args.catalog)
        settings = InferenceSettings.from_env()
        if args.peer_pid is not None and not args.peer_url:
            raise ValueError("--peer-pid needs --peer-url")
        # First: a peer stopped by hand runs again before it is asked for its models.
        peer_pause = PeerPause(args.peer_pid) if args.peer_pid is not None else None
        peer = None
        if args.peer_url:
            peer = connect_peer(args.peer_url, args.peer_model, args.peer_api_key_env)
        rows, figures = run_benchmark(
            catalog,
            settings,
            args.model,
            max_new_tokens=args.max_new_tokens,
            concurrency_levels=levels,
            rounds=args.rounds,
            dtype=args.dtype,
            measure_cold=not args.skip_cold,
            peer=peer,
            peer_pause=peer_pause,
        )
    except (CatalogError, ValueError, InferenceError, PeerError, PeerPauseError) as exc:
        if peer_pause is not None:
            peer_pause.restore()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    print(json.dumps(figures, sort_keys=True))
    return 0


def eval_replies(args: argparse.Namespace) -> int:
    from inference.engine import Engine
    from inference.replies_eval import (
        PromptListError,
        ReplyFailed,
        is_looping,
        load_prompts,
        run_replies,
        summarize,
    )

    if args.max_new_tokens is not None and not 1 <= args.max_new_tokens <= MAX_BENCH_NEW_TOKENS:
        print(f"error: --max-new-tokens must be 1..{MAX_BENCH_NEW_TOKENS}", file=sys.stderr)
        return 2
    try:
        prompts = load_prompts(args.prompts)
        catalog = load_catalog(args.catalog)
        settings = InferenceSettings.from_env()
        catalog.get(args.model)
    except (PromptListError, CatalogError, ValueError, InferenceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run() -> list[Any]:
        engine = Engine(catalog, settings)
        try:
            await engine.load(args.model)
            return await run_replies(
                engine, args.model, prompts, args.max_new_tokens, settings.max_batch_size
            )
        finally:
            await engine.close()

    try:
        results = asyncio.run(run())
    except (InferenceError, ReplyFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for result in results:
        loop = " LOOP" if is_looping(result.text) else ""
        reply = result.text.strip().replace("\n", " / ")
        shown = reply if args.show else reply[:70]
        print(f"{result.finish_reason:<6} {result.completion_tokens:>4}{loop}  {shown}")
    figures = {"model": args.model, **summarize(results)}
    print(
        f"self-ended {figures['self_ended_share']:.0%}, looping {figures['loop_share']:.0%}, "
        f"echo only {figures['echo_share']:.0%}, median reply "
        f"{figures['median_completion_tokens']} tokens, {figures['prompts']} prompts"
    )
    print(json.dumps(figures, sort_keys=True))
    return 0
