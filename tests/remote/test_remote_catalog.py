"""The `remote` source kind of the catalog (validated with errors that name the field), the URL
pool's choice (least outstanding, failed URLs skipped with a bounded back-off), the wire format's
parsing, the engine's request limits applied before any upstream is asked, and `ledgerchat
models list` reporting each remote URL's reachability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference import ChatMessage, GenerationRequest, InferenceSettings, InvalidRequest
from inference.catalog import CatalogError, merge_catalog
from inference.remote.backend import RemoteBackend
from inference.remote.urls import BACKOFF_MAX_S, UrlPool
from inference.remote.wire import WireError, model_context_limit, parse_chunk
from tests.remote.upstreams import Upstream
from tests.web.web_testing import free_port
from web.cli import main


def catalog_with(tmp_path: Path, source: str, extra: str = "") -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(
        f"""
[[models]]
id = "far"
source = {{ {source} }}
max_new_tokens_cap = 32
{extra}
""",
        encoding="utf-8",
    )
    return path


class TestRemoteCatalogEntries:
    def test_a_remote_entry_is_read_with_its_defaults(self, tmp_path: Path) -> None:
        """base_urls, model and api_key_env are kept (the URL without a trailing slash); the
        context limit is left to the upstream (0) unless configured."""
        path = catalog_with(
            tmp_path,
            'kind = "remote", base_urls = ["http://10.0.0.5:8000/"], model = "gemma", '
            'api_key_env = "VLLM_KEY"',
        )
        entry = merge_catalog(path, {}).get("far")
        remote = entry.source.remote
        assert remote is not None
        assert remote.base_urls == ("http://10.0.0.5:8000",)
        assert (remote.model, remote.api_key_env) == ("gemma", "VLLM_KEY")
        assert entry.context_limit_tokens == 0
        assert remote.max_concurrent_per_url == 64

    @pytest.mark.parametrize(
        ("source", "message"),
        [
            ('kind = "remote", model = "m"', "base_urls"),
            ('kind = "remote", base_urls = ["ftp://x"], model = "m"', "http:// or https://"),
            ('kind = "remote", base_urls = ["http://x/v1"], model = "m"', "without /v1"),
            ('kind = "remote", base_urls = ["http://x"]', "`model`"),
            (
                'kind = "remote", base_urls = ["http://x"], model = "m", api_key_env = "sk-123"',
                "NAME of an environment variable",
            ),
            (
                'kind = "remote", base_urls = ["http://x"], model = "m", read_timeout_s = 0',
                "read_timeout_s",
            ),
            (
                'kind = "remote", base_urls = ["http://x"], model = "m", '
                "max_concurrent_per_url = 0",
                "max_concurrent_per_url",
            ),
            (
                'kind = "remote", base_urls = ["http://x"], model = "m", '
                "extra_body = { max_tokens = 9 }",
                "must not set max_tokens",
            ),
            ('kind = "remote", base_urls = ["http://x"], model = "m", key = "x"', "unknown keys"),
        ],
    )
    def test_bad_remote_entries_are_refused_naming_the_field(
        self, tmp_path: Path, source: str, message: str
    ) -> None:
        """Each mistake is a CatalogError naming the entry and what is wrong."""
        with pytest.raises(CatalogError) as raised:
            merge_catalog(catalog_with(tmp_path, source), {})
        assert "far" in str(raised.value)
        assert message in str(raised.value)


class TestUrlPool:
    def test_least_outstanding_first_and_a_failed_url_last(self) -> None:
        """The URL with fewest requests in flight comes first; one that failed lately is tried
        only after the healthy ones, and its back-off is bounded."""
        pool = UrlPool(("http://a", "http://b", "http://c"), max_concurrent=2)
        a, b, c = pool.urls
        a.outstanding, b.outstanding = 1, 0
        c.failed("refused", now=100.0)
        assert [url.url for url in pool.candidates(now=100.5)] == [
            "http://b",
            "http://a",
            "http://c",
        ]
        for _ in range(20):
            c.failed("refused", now=100.0)
        assert c.skip_until - 100.0 <= BACKOFF_MAX_S
        c.succeeded(3.0)
        # Back to health: ordered by requests in flight again.
        assert [url.url for url in pool.candidates(now=100.5)] == [
            "http://b",
            "http://c",
            "http://a",
        ]

    def test_a_url_at_its_cap_is_not_offered(self) -> None:
        pool = UrlPool(("http://a", "http://b"), max_concurrent=1)
        pool.urls[0].outstanding = 1
        assert [url.url for url in pool.candidates()] == ["http://b"]
        pool.urls[1].outstanding = 1
        assert pool.all_full()


class TestWire:
    def test_chunks_usage_done_and_errors(self) -> None:
        """Text and finish reason from a choice, usage from the final chunk, None for [DONE],
        and an upstream error object is an error, not text."""
        chunk = parse_chunk('{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}')
        assert chunk is not None and chunk.text == "Hi" and chunk.usage is None
        last = parse_chunk('{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}')
        assert last is not None and last.usage is not None and last.usage.completion_tokens == 2
        assert parse_chunk("[DONE]") is None
        with pytest.raises(WireError, match="boom"):
            parse_chunk('{"error":{"message":"boom"}}')

    def test_max_model_len_of_the_served_model(self) -> None:
        answer = {"data": [{"id": "m", "max_model_len": 2048}, {"id": "other"}]}
        assert model_context_limit(answer, "m") == 2048
        assert model_context_limit(answer, "other") is None
        with pytest.raises(WireError, match="does not serve 'x'"):
            model_context_limit(answer, "x")


class TestPrepareLimits:
    @pytest.mark.parametrize(
        ("messages", "message"),
        [
            (("a", "b", "c"), "at most 2 messages"),
            (("x" * 11,), "at most 10 are allowed"),
        ],
    )
    async def test_requests_over_the_engine_limits_are_refused_before_any_upstream(
        self, tmp_path: Path, messages: tuple[str, ...], message: str
    ) -> None:
        """LEDGERCHAT_INFERENCE_MAX_PROMPT_MESSAGES and _MAX_MESSAGE_CHARS bind a remote model
        as the in-process engine: InvalidRequest, though its only URL has no listener."""
        dead = f"http://127.0.0.1:{free_port()}"
        path = catalog_with(tmp_path, f'kind = "remote", base_urls = ["{dead}"], model = "m"')
        settings = InferenceSettings(max_prompt_messages=2, max_message_chars=10)
        backend = RemoteBackend([merge_catalog(path, {}).get("far")], settings, {})
        roles = ("user", "assistant")
        turns = [ChatMessage(roles[n % 2], text) for n, text in enumerate(messages)]
        try:
            with pytest.raises(InvalidRequest, match=message):
                await backend.prepare(GenerationRequest("far", tuple(turns)))
        finally:
            await backend.close()


@pytest.mark.slow
@pytest.mark.live
class TestModelsList:
    def test_models_list_reports_each_remote_url(
        self,
        engine_upstream: Upstream,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`models list --json` probes each remote URL: the live upstream reachable with a
        latency, a URL nobody listens on unreachable with the error."""
        dead = f"http://127.0.0.1:{free_port()}"
        path = catalog_with(
            tmp_path,
            f'kind = "remote", base_urls = ["{engine_upstream.base_url}", "{dead}"], '
            f'model = "{engine_upstream.model}", api_key_env = "TEST_UPSTREAM_KEY", '
            "connect_timeout_s = 2",
        )
        monkeypatch.setenv("TEST_UPSTREAM_KEY", engine_upstream.api_key)
        assert main(["models", "list", "--catalog", str(path), "--json"]) == 0
        listed = {model["id"]: model for model in json.loads(capsys.readouterr().out)}
        urls = {item["url"]: item for item in listed["far"]["remote_urls"]}
        assert urls[engine_upstream.base_url]["reachable"] is True
        assert urls[engine_upstream.base_url]["latency_ms"] > 0
        assert urls[dead]["reachable"] is False
        assert urls[dead]["error"]
