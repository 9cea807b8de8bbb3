"""`ledgerchat models list|pull` and `ledgerchat bench inference` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.inference.conftest import TINY, TINY_MISSING
from web.cli import main

BENCH_KEYS = {
    "raw_generate_tok_s",
    "single_stream_tok_s",
    "aggregate_tok_s",
    "ttft_ms_p50",
    "ttft_ms_p95",
    "load_s_cold",
    "load_s_cached",
    "peak_rss_mb",
}


class TestModelsCommand:
    def test_list_json(
        self, tiny_catalog_path: Path, capsys: pytest.CaptureFixture[str], no_catalog_env: None
    ) -> None:
        """`models list --json` reports every catalog model with its availability."""
        assert main(["models", "list", "--catalog", str(tiny_catalog_path), "--json"]) == 0
        models = {item["id"]: item for item in json.loads(capsys.readouterr().out)}
        assert models[TINY]["available"] is True
        assert models[TINY_MISSING]["available"] is False
        assert models[TINY_MISSING]["how_to_provide"]
        assert "gemma-3-270m" in models

    def test_list_table(
        self, tiny_catalog_path: Path, capsys: pytest.CaptureFixture[str], no_catalog_env: None
    ) -> None:
        """The table has a header and one line per model, unavailable ones with the reason."""
        assert main(["models", "list", "--catalog", str(tiny_catalog_path)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("ID")
        assert any(line.startswith(TINY + " ") and " yes " in line for line in lines)
        missing = next(line for line in lines if line.startswith(TINY_MISSING + " "))
        assert " no " in missing and "does not exist" in missing

    def test_pull_unavailable_fails_clearly(
        self, tiny_catalog_path: Path, capsys: pytest.CaptureFixture[str], no_catalog_env: None
    ) -> None:
        """Pulling a model whose weights cannot be fetched exits 2 with the reason."""
        code = main(["models", "pull", TINY_MISSING, "--catalog", str(tiny_catalog_path)])
        assert code == 2
        assert "does not exist" in capsys.readouterr().err


class TestBenchCommand:
    @pytest.mark.parametrize(("streams", "levels"), [("1,2", {"1", "2"}), ("1", {"1"})])
    def test_bench_prints_table_then_json(
        self,
        streams: str,
        levels: set[str],
        tiny_catalog_path: Path,
        capsys: pytest.CaptureFixture[str],
        no_catalog_env: None,
    ) -> None:
        """The benchmark runs on a model and ends with one JSON line of the agreed figures."""
        code = main(
            ["bench", "inference", "--catalog", str(tiny_catalog_path), "--model", TINY,
             "--max-new-tokens", "6", "--rounds", "1", "--streams", streams]
        )  # fmt: skip
        assert code == 0
        lines = capsys.readouterr().out.strip().splitlines()
        figures = json.loads(lines[-1])
        assert set(figures) >= BENCH_KEYS
        assert set(figures["aggregate_tok_s"]) == levels
        assert figures["ttft_ms_p95"] >= figures["ttft_ms_p50"] > 0
        assert figures["single_stream_tok_s"] > 0 and figures["raw_generate_tok_s"] > 0
        assert figures["load_s_cold"] > 0 and figures["peak_rss_mb"] > 0
        assert any(line.startswith("single_stream_tok_s") for line in lines[:-1])
        if len(levels) > 1:
            # Plain generate with the largest batch, the ceiling for the aggregate.
            assert figures["raw_batch_size"] == max(int(level) for level in levels)
            assert figures["raw_batch_generate_tok_s"] > 0
            assert figures["aggregate_vs_raw_batch"] == pytest.approx(
                figures["aggregate_tok_s"]["2"] / figures["raw_batch_generate_tok_s"]
            )
        else:
            assert "raw_batch_generate_tok_s" not in figures

    @pytest.mark.parametrize(
        "arguments", [["--streams", "two"], ["--streams", "0"], ["--max-new-tokens", "0"]]
    )
    def test_bad_arguments(
        self, arguments: list[str], capsys: pytest.CaptureFixture[str], no_catalog_env: None
    ) -> None:
        """Malformed benchmark options exit 2 before loading anything."""
        assert main(["bench", "inference", *arguments]) == 2
        assert "error" in capsys.readouterr().err
