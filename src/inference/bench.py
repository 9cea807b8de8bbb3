"""`ledgerchat bench inference`: load times, plain `generate` speed, and the engine's single
stream, aggregate and time-to-first-token figures on one model, in one process and run, so
the ratios the issue sets as targets are taken under the same conditions. With a peer (any
OpenAI-compatible server, `bench_peer.py`) the same load test runs against it in the same
run, its rounds alternating with the engine's, and the ratios ours / peer are reported; with
the peer's process id as well it is stopped during the engine's rounds (`peer_pause.py`)."""

from __future__ import annotations

import asyncio
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from inference.bench_peer import Peer, PeerReply, peer_client, run_peer_streams
from inference.catalog import Catalog, CatalogEntry, DType
from inference.engine import Engine
from inference.events import Finished, TextDelta
from inference.loading import load_model
from inference.peer_pause import PeerPause
from inference.requests import ChatMessage, GenerationRequest, SamplingParams
from inference.settings import InferenceSettings
from inference.text import encode_prompt
from inference.threads import FIRST_PROBE_AFTER_STEPS, PROBE_STEPS

# Decode steps of the warm-up stream: the thread governor's first probe ends within them.
WARM_UP_TOKENS = FIRST_PROBE_AFTER_STEPS + PROBE_STEPS + 4

# Varied prompts so concurrent streams are not identical rows.
PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright while it is moving.",
    "List some good habits for writing clear software documentation.",
    "Describe the water cycle to a ten year old.",
    "What should a traveller pack for a week of hiking in the mountains?",
    "Summarise the history of the printing press in a few paragraphs.",
    "Give advice to someone learning to cook for the first time.",
    "Why do leaves change colour in autumn?",
)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: with few samples it is an observed value)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run_benchmark(
    catalog: Catalog,
    settings: InferenceSettings,
    model_id: str,
    max_new_tokens: int,
    concurrency_levels: tuple[int, ...],
    rounds: int,
    dtype: DType | None,
    measure_cold: bool,
    peer: Peer | None = None,
    peer_pause: PeerPause | None = None,
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(table rows, figures). Blocking; prints nothing."""
    entry = catalog.get(model_id)
    if dtype is not None:
        entry = replace(entry, dtype=dtype)
    # Streams must run to the token budget to measure decode speed: no turn frame that ends
    # them at a stop string (the repetition guard stays, its cost is the engine's).
    entry = replace(
        entry, prompting=replace(entry.prompting, prompt_format="chat", stop_strings=())
    )
    catalog = Catalog(tuple(entry if e.id == model_id else e for e in catalog))
    if peer_pause is not None:
        peer_pause.stop_all()  # the loads and every engine round run without the peer
    try:
        figures = _measure(catalog, settings, entry, max_new_tokens, concurrency_levels,
                           rounds, measure_cold, peer, peer_pause)  # fmt: skip
    finally:
        if peer_pause is not None:
            peer_pause.restore()
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    single = figures["single_stream_tok_s"]
    figures["single_vs_raw"] = single / figures["raw_generate_tok_s"]
    if 8 in concurrency_levels:
        figures["aggregate_8_vs_single"] = figures["aggregate_tok_s"]["8"] / single
    if "raw_batch_generate_tok_s" in figures:
        top = str(figures["raw_batch_size"])
        figures["aggregate_vs_raw_batch"] = (
            figures["aggregate_tok_s"][top] / figures["raw_batch_generate_tok_s"]
        )
    if peer is not None:
        _add_peer_ratios(figures)
    return _table(figures), figures


def _measure(
    catalog: Catalog,
    settings: InferenceSettings,
    entry: CatalogEntry,
    max_new_tokens: int,
    concurrency_levels: tuple[int, ...],
    rounds: int,
    measure_cold: bool,
    peer: Peer | None,
    peer_pause: PeerPause | None,
) -> dict[str, Any]:
    """The load times, then the engine's (and the peer's) rounds."""
    figures: dict[str, Any] = {"model": entry.id, "dtype": entry.dtype}
    if measure_cold:
        # A fresh cache directory makes the first load convert a GGUF source from scratch.
        with tempfile.TemporaryDirectory(prefix="ledgerchat-bench-") as cold_dir:
            cold_settings = settings.model_copy(update={"cache_dir": Path(cold_dir)})
            figures["load_s_cold"] = load_model(entry, cold_settings).load_s
            figures["load_s_cached"] = load_model(entry, cold_settings).load_s
    else:
        load_model(entry, settings)  # make sure the cache is warm
        figures["load_s_cold"] = None
        figures["load_s_cached"] = load_model(entry, settings).load_s
    engine_figures = _measure_engine(
        catalog, settings, entry.id, max_new_tokens, concurrency_levels, rounds, peer, peer_pause
    )
    figures.update(asyncio.run(engine_figures))
    return figures


def _add_peer_ratios(figures: dict[str, Any]) -> None:
    """Ours / peer for the single stream and the aggregate at 8 streams (where measured)."""
    figures["single_vs_peer"] = figures["single_stream_tok_s"] / figures["peer_single_tok_s"]
    if "8" in figures["peer_aggregate_tok_s"]:
        figures["peer_aggregate_tok_s_8"] = figures["peer_aggregate_tok_s"]["8"]
        figures["aggregate_8_vs_peer"] = (
            figures["aggregate_tok_s"]["8"] / figures["peer_aggregate_tok_s_8"]
        )


async def _measure_engine(
    catalog: Catalog,
    settings: InferenceSettings,
    model_id: str,
    max_new_tokens: int,
    concurrency_levels: tuple[int, ...],
    rounds: int,
    peer: Peer | None,
    peer_pause: PeerPause | None,
) -> dict[str, Any]:
    top_level = max(concurrency_levels)
    engine = Engine(catalog, settings.model_copy(update={"max_batch_size": top_level}))
    client = peer_client(top_level) if peer is not None else None

    async def peer_streams(prompts: list[str], tokens: int) -> tuple[list[PeerReply], float]:
        """One round of the peer, which runs only during its own rounds when paused."""
        assert client is not None and peer is not None
        if peer_pause is not None:
            peer_pause.continue_all()
        try:
            return await run_peer_streams(client, peer, prompts, tokens)
        finally:
            if peer_pause is not None:
                peer_pause.stop_all()

    try:
        loaded = await engine.load(model_id)
        # Warm-up: first calls allocate and pick kernels, and the thread governor makes its
        # first choice (WARM_UP_TOKENS decode steps); a running server is past all of that.
        await _run_streams(engine, model_id, 1, WARM_UP_TOKENS)
        if client is not None and peer is not None:
            await peer_streams(_prompts(1), 8)
        # Raw generate, the single stream and the peer alternate, so load from other processes
        # on a shared machine drifts into all of them alike instead of biasing their ratios.
        raw_rates, single_rates, peer_single_rates = [], [], []
        ttft_ms: list[float] = []
        peer_ttft_ms: list[float] = []
        for _ in range(rounds):
            raw_rates.append(_raw_generate_rate(loaded, max_new_tokens))
            finished, wall_s = await _run_streams(engine, model_id, 1, max_new_tokens)
            single_rates.append(finished[0].completion_tokens / wall_s)
            if top_level == 1:
                ttft_ms += _first_token_times(finished)
            if client is not None and peer is not None:
                replies, wall_s = await peer_streams(_prompts(1), max_new_tokens)
                peer_single_rates.append(replies[0].completion_tokens / wall_s)
                if top_level == 1:
                    peer_ttft_ms += [r.first_token_ms for r in replies if r.first_token_ms]
        results: dict[str, Any] = {"raw_generate_tok_s": statistics.median(raw_rates)}
        aggregate: dict[str, float] = {"1": statistics.median(single_rates)}
        peer_aggregate: dict[str, float] = {}
        if peer_single_rates:
            peer_aggregate["1"] = statistics.median(peer_single_rates)
        raw_batch_rates: list[float] = []
        for level in concurrency_levels:
            if level == 1:
                continue
            rates, peer_rates = [], []
            for _ in range(rounds):
                if level == top_level:
                    # What plain `generate` does with a batch this big, alternating as above:
                    # the ceiling batching can reach on this machine.
                    raw_batch_rates.append(_raw_generate_rate(loaded, max_new_tokens, level))
                finished, wall_s = await _run_streams(engine, model_id, level, max_new_tokens)
                rates.append(sum(item.completion_tokens for item in finished) / wall_s)
                if level == top_level:
                    ttft_ms += _first_token_times(finished)
                if client is not None and peer is not None:
                    prompts = _prompts(level)
                    replies, wall_s = await peer_streams(prompts, max_new_tokens)
                    peer_rates.append(sum(r.completion_tokens for r in replies) / wall_s)
                    if level == top_level:
                        peer_ttft_ms += [r.first_token_ms for r in replies if r.first_token_ms]
            aggregate[str(level)] = statistics.median(rates)
            if peer_rates:
                peer_aggregate[str(level)] = statistics.median(peer_rates)
        results["single_stream_tok_s"] = aggregate.get("1")
        if raw_batch_rates:
            results["raw_batch_size"] = top_level
            results["raw_batch_generate_tok_s"] = statistics.median(raw_batch_rates)
        results["aggregate_tok_s"] = aggregate
        results["ttft_ms_p50"] = percentile(ttft_ms, 0.50)
        results["ttft_ms_p95"] = percentile(ttft_ms, 0.95)
        results["ttft_streams"] = top_level
        results["max_new_tokens"] = max_new_tokens
        if peer is not None:
            results.update(_peer_results(peer, peer_aggregate, peer_ttft_ms))
        return results
    finally:
        if client is not None:
            await client.aclose()
        await engine.close()


def _peer_results(
    peer: Peer, aggregate: dict[str, float], first_token_ms: list[float]
) -> dict[str, Any]:
    return {
        "peer_url": peer.root,
        "peer_model": peer.model,
        "peer_single_tok_s": aggregate["1"],
        "peer_aggregate_tok_s": aggregate,
        "peer_ttft_ms_p50": percentile(first_token_ms, 0.50) if first_token_ms else None,
        "peer_ttft_ms_p95": percentile(first_token_ms, 0.95) if first_token_ms else None,
    }


def _prompts(count: int) -> list[str]:
    """The prompts of `count` concurrent streams, as `_bench_request` picks them."""
    return [PROMPTS[index % len(PROMPTS)] for index in range(count)]


def _first_token_times(finished: list[Finished]) -> list[float]:
    times = [item.timings.time_to_first_token_ms for item in finished]
    return [value for value in times if value is not None]


def _bench_request(model_id: str, index: int, max_new_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        model_id=model_id,
        messages=(ChatMessage("user", PROMPTS[index % len(PROMPTS)]),),
        sampling=SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens),
    )


async def _run_streams(
    engine: Engine, model_id: str, count: int, max_new_tokens: int
) -> tuple[list[Finished], float]:
    async def one(index: int) -> Finished:
        async for event in engine.stream(_bench_request(model_id, index, max_new_tokens)):
            if isinstance(event, Finished):
                return event
            assert isinstance(event, TextDelta)
        raise AssertionError("stream ended without Finished")

    started = time.perf_counter()
    finished = await asyncio.gather(*(one(index) for index in range(count)))
    return list(finished), time.perf_counter() - started


def _raw_generate_rate(loaded: Any, max_new_tokens: int, batch: int = 1) -> float:
    """Plain transformers generate, same prompt format and token budget, `batch` copies of
    the first prompt (one row's cost is the same whatever its text); the whole call is
    timed, prefill included, as the engine's streams are. Tokens per second, all rows."""
    request = _bench_request(loaded.entry.id, 0, max_new_tokens)
    prompt_ids = encode_prompt(loaded.tokenizer, request.messages)
    input_ids = torch.tensor([prompt_ids] * batch, device=loaded.device)
    with torch.inference_mode():
        started = time.perf_counter()
        output = loaded.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(loaded.stop_token_ids),
            pad_token_id=0,
        )
        elapsed = time.perf_counter() - started
    return float(batch * (output.shape[1] - len(prompt_ids))) / elapsed


def _table(figures: dict[str, Any]) -> list[tuple[str, str]]:
    def number(value: object, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows = [
        ("model", str(figures["model"])),
        ("dtype", str(figures["dtype"])),
        ("load_s_cold", number(figures["load_s_cold"])),
        ("load_s_cached", number(figures["load_s_cached"])),
        ("raw_generate_tok_s", number(figures["raw_generate_tok_s"])),
        ("single_stream_tok_s", number(figures["single_stream_tok_s"])),
        ("single / raw", number(figures["single_vs_raw"], 2)),
    ]
    for level, rate in figures["aggregate_tok_s"].items():
        rows.append((f"aggregate_tok_s @ {level}", number(rate)))
    if "aggregate_8_vs_single" in figures:
        rows.append(("aggregate @ 8 / single", number(figures["aggregate_8_vs_single"], 2)))
    if "raw_batch_generate_tok_s" in figures:
        size = figures["raw_batch_size"]
        rows.append(
            (f"raw_batch_generate_tok_s @ {size}", number(figures["raw_batch_generate_tok_s"]))
        )
        rows.append(
            (f"aggregate @ {size} / raw batch", number(figures["aggregate_vs_raw_batch"], 2))
        )
    streams = figures["ttft_streams"]
    rows += [
        (f"ttft_ms_p50 @ {streams}", number(figures["ttft_ms_p50"], 0)),
        (f"ttft_ms_p95 @ {streams}", number(figures["ttft_ms_p95"], 0)),
        ("peak_rss_mb", number(figures["peak_rss_mb"], 0)),
    ]
    if "peer_url" in figures:
        rows.append(("peer", f"{figures['peer_model']} at {figures['peer_url']}"))
        for level, rate in figures["peer_aggregate_tok_s"].items():
            rows.append((f"peer aggregate_tok_s @ {level}", number(rate)))
        rows.append(("single / peer", number(figures["single_vs_peer"], 2)))
        if "aggregate_8_vs_peer" in figures:
            rows.append(("aggregate @ 8 / peer", number(figures["aggregate_8_vs_peer"], 2)))
        rows.append((f"peer ttft_ms_p50 @ {streams}", number(figures["peer_ttft_ms_p50"], 0)))
        rows.append((f"peer ttft_ms_p95 @ {streams}", number(figures["peer_ttft_ms_p95"], 0)))
    return rows
