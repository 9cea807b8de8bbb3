"""The figures of `ledgerchat bench service --workers`: one record per (web processes, users)
run, a table of them, and the summary JSON object printed as the last line:

    {"aggregate_tok_s_by_workers": {"1": {"8": 71.2, "32": 80.4}, "2": {...}},
     "billing_overhead_ms_p50_by_workers": {...}, "billing_overhead_ms_p99_by_workers": {...},
     "runs": [...every record...], "model": ..., "max_tokens": ..., ...}

keyed by the number of web processes, then by the number of users (JSON keys are strings)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from web.bench_load import LoadResult
    from web.bench_service_run import RunOptions


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def run_record(workers: int, load: LoadResult, billing_ms: list[float]) -> dict[str, Any]:
    completed = load.completed
    first_delta_ms = [
        (o.first_delta_s - o.started_s) * 1000 for o in completed if o.first_delta_s is not None
    ]
    return {
        "workers": workers,
        "users": load.users,
        "chats": len(completed),
        "failed_chats": len(load.failed),
        "failures": sorted({str(o.error or o.status)[:200] for o in load.failed})[:5],
        "processes_answering": len({o.upstream for o in completed if o.upstream}),
        "completion_tokens": load.completion_tokens,
        "wall_s": round(load.wall_s, 2),
        "aggregate_tok_s": round(load.completion_tokens / load.wall_s, 2) if load.wall_s else 0,
        "billing_samples": len(billing_ms),
        "billing_overhead_ms_p50": _rounded(percentile(billing_ms, 0.5)),
        "billing_overhead_ms_p99": _rounded(percentile(billing_ms, 0.99)),
        "first_delta_ms_p50": _rounded(percentile(first_delta_ms, 0.5), 0),
    }


def _by_workers(runs: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for run in runs:
        table.setdefault(str(run["workers"]), {})[str(run["users"])] = run[key]
    return table


def summary(runs: list[dict[str, Any]], options: RunOptions) -> dict[str, Any]:
    return {
        "aggregate_tok_s_by_workers": _by_workers(runs, "aggregate_tok_s"),
        "billing_overhead_ms_p50_by_workers": _by_workers(runs, "billing_overhead_ms_p50"),
        "billing_overhead_ms_p99_by_workers": _by_workers(runs, "billing_overhead_ms_p99"),
        "runs": runs,
        "model": options.model,
        "max_tokens": options.max_tokens,
        "duration_s": options.duration_s,
        "requests": options.requests,
    }


def print_runs(runs: list[dict[str, Any]], options: RunOptions) -> None:
    from rich.console import Console
    from rich.table import Table

    load = (
        f"{options.requests} chats" if options.requests is not None else f"{options.duration_s} s"
    )
    table = Table(
        title=f"bench service --workers: {options.model}, {options.max_tokens} tokens per chat, "
        f"{load} per run",
        caption="web: web processes; tok/s: aggregate completion tokens/s; bill: billing "
        "overhead per chat (ms, server side); TTFT: first text event (ms, client side)",
    )
    # Short headers: the table must fit an 80-column terminal.
    for column in ("web", "users", "chats", "failed", "tok/s", "bill p50", "bill p99", "TTFT p50"):
        table.add_column(column, justify="right")
    for run in runs:
        table.add_row(
            str(run["workers"]),
            str(run["users"]),
            str(run["chats"]),
            str(run["failed_chats"]),
            str(run["aggregate_tok_s"]),
            str(run["billing_overhead_ms_p50"]),
            str(run["billing_overhead_ms_p99"]),
            str(run["first_delta_ms_p50"]),
        )
    Console().print(table)
