"""The parts of `ledgerchat bench service --workers` that need no running service: its option
checks, the web processes' catalog (no model left that a process would load itself), the
billing times read from the processes' JSON log lines, and the summary's shape. The run itself
is tests/multiproc/test_bench_service.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from inference import merge_catalog
from web.bench_load import ChatOutcome, LoadResult
from web.bench_report import percentile, run_record, summary
from web.bench_service_run import (
    Engine,
    RunOptions,
    billing_ms_by_request,
    web_environ,
    write_web_catalog,
)
from web.bench_workers import run_options
from web.cli import build_parser
from web.settings import load_settings
from web.workers import check_workers


def parse(*words: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", "service", *words])


def options(**changes: object) -> RunOptions:
    base = dict(
        workers=[1, 2],
        users=[8, 32],
        model="gemma-3-270m",
        engine_catalog=None,
        max_tokens=16,
        duration_s=None,
        requests=4,
        postgres="postgresql://postgres@127.0.0.1:5432/postgres",
        redis_url="redis://127.0.0.1:6379/0",
    )
    base.update(changes)
    return RunOptions(**base)  # type: ignore[arg-type]


class TestOptions:
    def test_lists_are_sorted_and_deduplicated_with_defaults(self) -> None:
        """--workers 3,1,2,1 runs 1, 2, 3; users default to 8 and 32, 60 s each, the
        bundled 270M."""
        checked = run_options(parse("--workers", "3,1,2,1"))
        assert checked.workers == [1, 2, 3]
        assert checked.users == [8, 32]
        assert checked.duration_s == 60 and checked.requests is None
        assert checked.model == "gemma-3-270m"

    @pytest.mark.parametrize(
        ("words", "message"),
        [
            (("--workers", "0"), "1..16"),
            (("--workers", "17"), "1..16"),
            (("--workers", "one"), "whole numbers"),
            (("--workers", "1", "--users", "0"), "1..256"),
            (("--workers", "1", "--requests", "0"), "--requests"),
            (("--workers", "1", "--duration-s", "0"), "--duration-s"),
            (("--workers", "1", "--max-tokens", "4096"), "--max-tokens"),
            (("--workers", "1", "--db", "sqlite:///x.db"), "--db"),
            (("--workers", "1", "--engine-url", "http://x"), "--engine-url"),
        ],
    )
    def test_bad_options_are_refused_with_the_option_named(
        self, words: tuple[str, ...], message: str
    ) -> None:
        """Each bad value is a ValueError naming the option, before anything starts."""
        with pytest.raises(ValueError, match=message):
            run_options(parse(*words))

    def test_duration_and_requests_exclude_each_other(self) -> None:
        """Only one way to size a run."""
        with pytest.raises(SystemExit):
            parse("--workers", "1", "--duration-s", "5", "--requests", "5")


class TestWebCatalog:
    def test_no_model_is_left_for_a_web_process_to_load(self, tmp_path: Path) -> None:
        """The bench model and every bundled local entry are remote entries on the engine, so
        `serve --workers 3` accepts the catalog (fallbacks stay remote to remote)."""
        engine = Engine(url="http://127.0.0.1:8100", api_key="k" * 32, model="tiny")
        env = web_environ(tmp_path, "sqlite+aiosqlite:///x.db", engine, 8080, ("redis://x", "p:"))
        path = write_web_catalog(tmp_path, engine, options(model="tiny"))
        catalog = merge_catalog(path, {})
        assert all(entry.source.is_remote for entry in catalog)
        assert "tiny" in catalog.ids() and "gemma-3-270m" in catalog.ids()
        settings = load_settings(environ={**env, "LEDGERCHAT_CATALOG": str(path)}, env_file=None)
        check_workers(settings, 3)  # raises WorkersRefused otherwise


class TestBillingLog:
    def test_only_chat_settled_lines_with_billing_ms_count(self, tmp_path: Path) -> None:
        """JSON lines of `chat_settled` give each request's billing time; other events and
        non-JSON lines (a traceback, a warning) are skipped."""
        log = tmp_path / "web.log"
        lines = [
            json.dumps({"event": "chat_settled", "request_id": "a", "billing_ms": 12.5}),
            json.dumps({"event": "request_finished", "request_id": "b", "billing_ms": 99}),
            "Traceback (most recent call last): chat_settled",
            json.dumps({"event": "chat_settled", "request_id": "c"}),
            json.dumps({"event": "chat_settled", "request_id": "d", "billing_ms": 3}),
        ]
        log.write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert billing_ms_by_request(log) == {"a": 12.5, "d": 3.0}


class TestSummary:
    def test_figures_are_keyed_by_web_processes_then_users(self) -> None:
        """The last line's object: {"<workers>": {"<users>": value}} for tok/s and billing."""
        runs = []
        for workers in (1, 2):
            for users in (8, 32):
                load = LoadResult(users=users, started_s=0.0, finished_s=2.0)
                load.outcomes = [
                    ChatOutcome(status=200, request_id=f"r{i}", completion_tokens=10, upstream="x")
                    for i in range(4)
                ]
                runs.append(run_record(workers, load, [1.0, 2.0, 3.0, 40.0]))
        result = summary(runs, options())
        assert result["aggregate_tok_s_by_workers"] == {
            "1": {"8": 20.0, "32": 20.0},
            "2": {"8": 20.0, "32": 20.0},
        }
        assert result["billing_overhead_ms_p99_by_workers"]["2"]["32"] == 40.0
        assert result["billing_overhead_ms_p50_by_workers"]["1"]["8"] == 3.0
        json.dumps(result)  # the last line must be JSON

    def test_percentile_is_nearest_rank(self) -> None:
        """p50 and p99 pick observed values; no values give None, not 0."""
        values = [float(v) for v in range(1, 101)]
        assert percentile(values, 0.5) == 51.0
        assert percentile(values, 0.99) == 99.0
        assert percentile([], 0.99) is None
