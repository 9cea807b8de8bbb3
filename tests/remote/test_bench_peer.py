"""`ledgerchat bench inference --peer-url`: the same load test against a real OpenAI-compatible
server (`ledgerchat engine serve` of the tiny model) in the same run, ending with the peer's
rates, the ratios ours / peer and both TTFT percentiles in the last JSON line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.remote.upstreams import ENGINE_MODEL, Upstream, engine_catalog
from web.cli import main

KEY_ENV = "LEDGERCHAT_TEST_PEER_KEY"


@pytest.fixture
def bench_catalog(tiny_gemma_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny model in this process, its cache in the test's directory."""
    monkeypatch.setenv("LEDGERCHAT_INFERENCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LEDGERCHAT_INFERENCE_TORCH_THREADS", "1")
    path = tmp_path / "catalog.toml"
    path.write_text(engine_catalog(tiny_gemma_dir), encoding="utf-8")
    return path


class TestBenchPeer:
    def test_peer_figures_and_ratios(
        self,
        engine_upstream: Upstream,
        bench_catalog: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The peer runs the same levels; the ratios are ours divided by the peer's."""
        monkeypatch.setenv(KEY_ENV, engine_upstream.api_key)
        code = main(
            ["bench", "inference", "--catalog", str(bench_catalog), "--model", ENGINE_MODEL,
             "--max-new-tokens", "6", "--rounds", "1", "--streams", "1,8", "--skip-cold",
             "--peer-url", engine_upstream.v1_url, "--peer-api-key-env", KEY_ENV]
        )  # fmt: skip
        assert code == 0
        lines = capsys.readouterr().out.strip().splitlines()
        figures = json.loads(lines[-1])
        assert figures["peer_model"] == ENGINE_MODEL
        assert figures["peer_url"] == engine_upstream.base_url
        assert set(figures["peer_aggregate_tok_s"]) == {"1", "8"}
        assert figures["peer_single_tok_s"] > 0 and figures["peer_aggregate_tok_s_8"] > 0
        assert figures["single_vs_peer"] == pytest.approx(
            figures["single_stream_tok_s"] / figures["peer_single_tok_s"]
        )
        assert figures["aggregate_8_vs_peer"] == pytest.approx(
            figures["aggregate_tok_s"]["8"] / figures["peer_aggregate_tok_s_8"]
        )
        assert figures["peer_ttft_ms_p95"] >= figures["peer_ttft_ms_p50"] > 0
        assert any(line.startswith("single / peer") for line in lines[:-1])

    def test_unreachable_peer_fails_before_loading(
        self, bench_catalog: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A peer that does not answer is a clear error (exit 2), not a half-run benchmark."""
        code = main(
            ["bench", "inference", "--catalog", str(bench_catalog), "--model", ENGINE_MODEL,
             "--peer-url", "http://127.0.0.1:9/v1"]
        )  # fmt: skip
        assert code == 2
        assert "unreachable" in capsys.readouterr().err

    def test_unknown_peer_model(
        self,
        engine_upstream: Upstream,
        bench_catalog: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Naming a model the peer does not serve says which ones it serves."""
        monkeypatch.setenv(KEY_ENV, engine_upstream.api_key)
        code = main(
            ["bench", "inference", "--catalog", str(bench_catalog), "--model", ENGINE_MODEL,
             "--peer-url", engine_upstream.base_url, "--peer-model", "nope",
             "--peer-api-key-env", KEY_ENV]
        )  # fmt: skip
        assert code == 2
        assert ENGINE_MODEL in capsys.readouterr().err
