"""`ledgerchat engine serve` as a real process: the OpenAI-compatible answers carry exactly what
the in-process engine produces (text, token counts, finish reason), `/tokenize` counts the
prompt the engine bills, the bearer secret is enforced, and a client that goes away stops its
generation at once (counted in `/metrics`, logged, its slot freed)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference import Engine, GenerationRequest, InferenceSettings, SamplingParams, load_catalog
from inference.events import Finished, TextDelta
from inference.requests import ChatMessage
from tests.remote.upstreams import (
    ENGINE_CONTEXT_LIMIT,
    ENGINE_MAX_TOKENS_CAP,
    ENGINE_MODEL,
    Upstream,
    engine_catalog,
)
from web.cli import main

TIMEOUT = httpx.Timeout(120.0)
QUESTION = "Name three colours of the rainbow, please."


@pytest.fixture
async def reference_engine(tiny_gemma_dir: Path, tmp_path: Path) -> AsyncIterator[Engine]:
    """The same model in this process: what the server's answers must equal."""
    catalog_path = tmp_path / "catalog.toml"
    catalog_path.write_text(engine_catalog(tiny_gemma_dir), encoding="utf-8")
    engine = Engine(
        load_catalog(catalog_path, environ={}), InferenceSettings(cache_dir=tmp_path / "cache")
    )
    yield engine
    await engine.close()


async def engine_answer(engine: Engine, content: str, max_tokens: int) -> tuple[str, Finished]:
    request = GenerationRequest(
        model_id=ENGINE_MODEL,
        messages=(ChatMessage("user", content),),
        sampling=SamplingParams(temperature=0.0, max_new_tokens=max_tokens),
    )
    parts: list[str] = []
    async for event in engine.stream(request):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise AssertionError("no Finished event")


def chat_body(content: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": ENGINE_MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }


def sse_payloads(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


class TestCompletions:
    async def test_stream_with_usage_equals_the_engine(
        self, engine_upstream: Upstream, reference_engine: Engine
    ) -> None:
        """A streamed answer is the engine's text in `chat.completion.chunk`s (role first,
        `usage: null` on each), a finish chunk, one usage chunk with the engine's exact token
        counts, then `[DONE]`."""
        text, finished = await engine_answer(reference_engine, QUESTION, 12)
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=engine_upstream.headers) as client:
            response = await client.post(
                f"{engine_upstream.v1_url}/chat/completions",
                json=chat_body(QUESTION, 12, stream=True, stream_options={"include_usage": True}),
            )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_payloads(response.text)
        assert payloads[-1] == "[DONE]"
        chunks = [json.loads(payload) for payload in payloads[:-1]]
        assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
        assert len({chunk["id"] for chunk in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        *body, usage_chunk = chunks
        assert all(chunk["usage"] is None for chunk in body)
        streamed = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in body)
        assert streamed == text
        assert body[-1]["choices"][0]["finish_reason"] == finished.finish_reason
        assert usage_chunk["choices"] == []
        usage = usage_chunk["usage"]
        assert usage["prompt_tokens"] == finished.prompt_tokens
        assert usage["completion_tokens"] == finished.completion_tokens
        assert usage["total_tokens"] == finished.prompt_tokens + finished.completion_tokens

    async def test_non_streamed_answer_equals_the_engine(
        self, engine_upstream: Upstream, reference_engine: Engine
    ) -> None:
        """Without `stream`, one `chat.completion` with the engine's text, finish reason and
        token counts; `max_tokens` bounds the reply ('length')."""
        text, finished = await engine_answer(reference_engine, "Why is the sky blue?", 7)
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=engine_upstream.headers) as client:
            response = await client.post(
                f"{engine_upstream.v1_url}/chat/completions",
                json=chat_body("Why is the sky blue?", 7),
            )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["object"] == "chat.completion"
        assert answer["model"] == ENGINE_MODEL
        choice = answer["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": text}
        assert choice["finish_reason"] == finished.finish_reason
        assert answer["usage"]["prompt_tokens"] == finished.prompt_tokens
        assert answer["usage"]["completion_tokens"] == finished.completion_tokens <= 7

    async def test_stream_without_usage_has_no_usage_field(self, engine_upstream: Upstream) -> None:
        """Without `stream_options.include_usage` no chunk carries `usage` (OpenAI's shape)."""
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=engine_upstream.headers) as client:
            response = await client.post(
                f"{engine_upstream.v1_url}/chat/completions",
                json=chat_body(QUESTION, 3, stream=True),
            )
        chunks = [json.loads(payload) for payload in sse_payloads(response.text)[:-1]]
        assert chunks and all("usage" not in chunk for chunk in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


class TestModelsAndTokenize:
    async def test_models_report_max_model_len(self, engine_upstream: Upstream) -> None:
        """/v1/models lists the served model with its context limit as vLLM's max_model_len."""
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=engine_upstream.headers) as client:
            response = await client.get(f"{engine_upstream.v1_url}/models")
        assert response.status_code == 200
        models = response.json()["data"]
        assert [(m["id"], m["max_model_len"]) for m in models] == [
            (ENGINE_MODEL, ENGINE_CONTEXT_LIMIT)
        ]

    async def test_tokenize_counts_the_prompt_the_engine_bills(
        self, engine_upstream: Upstream, reference_engine: Engine
    ) -> None:
        """/tokenize of a chat gives the engine's prompt token ids, so its count equals the
        billed `prompt_tokens`; a plain prompt gets BOS plus its tokens."""
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello?"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "Any news?"},
        ]
        prepared = await reference_engine.prepare(
            GenerationRequest(
                model_id=ENGINE_MODEL,
                messages=tuple(ChatMessage(m["role"], m["content"]) for m in messages),
            )
        )
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=engine_upstream.headers) as client:
            tokenized = await client.post(
                f"{engine_upstream.base_url}/tokenize",
                json={"model": ENGINE_MODEL, "messages": messages, "add_generation_prompt": True},
            )
            chat = await client.post(
                f"{engine_upstream.v1_url}/chat/completions",
                json={**chat_body("", 2), "messages": messages},
            )
            plain = await client.post(
                f"{engine_upstream.base_url}/tokenize",
                json={"model": ENGINE_MODEL, "prompt": "abc"},
            )
        assert tokenized.status_code == 200, tokenized.text
        result = tokenized.json()
        assert result["tokens"] == list(prepared.prompt_ids)
        assert result["count"] == prepared.prompt_tokens == chat.json()["usage"]["prompt_tokens"]
        assert result["max_model_len"] == ENGINE_CONTEXT_LIMIT
        assert plain.json()["count"] == 4  # <bos> a b c: the tiny tokenizer has no merges


class TestErrors:
    async def test_requests_without_the_secret_are_refused(self, engine_upstream: Upstream) -> None:
        """No Authorization header or a wrong secret: 401 in OpenAI's error shape with a
        Bearer challenge, on /v1 and /tokenize; /health stays open for probes."""
        url = f"{engine_upstream.v1_url}/chat/completions"
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            missing = await client.post(url, json=chat_body(QUESTION, 2))
            wrong = await client.post(
                url,
                json=chat_body(QUESTION, 2),
                headers={"Authorization": f"Bearer {engine_upstream.api_key}x"},
            )
            models = await client.get(
                f"{engine_upstream.v1_url}/models", headers={"Authorization": "Bearer nope"}
            )
            tokenize = await client.post(
                f"{engine_upstream.base_url}/tokenize", json={"model": ENGINE_MODEL, "prompt": "a"}
            )
            health = await client.get(f"{engine_upstream.base_url}/health")
        for response in (missing, wrong, models, tokenize):
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert health.status_code == 200

    async def test_bad_requests_answer_in_openai_shape(self, engine_upstream: Upstream) -> None:
        """Unknown model 404 model_not_found; malformed body, unsupported n, or a prompt over
        the context limit 400, each naming the problem."""
        url = f"{engine_upstream.v1_url}/chat/completions"
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=engine_upstream.headers) as client:
            unknown = await client.post(url, json={**chat_body("hi", 2), "model": "nope"})
            malformed = await client.post(url, json={"model": ENGINE_MODEL})
            several = await client.post(url, json=chat_body("hi", 2, n=2))
            too_long = await client.post(url, json=chat_body("x" * (ENGINE_CONTEXT_LIMIT * 2), 2))
            bad_role = await client.post(
                url, json={**chat_body("hi", 2), "messages": [{"role": "tool", "content": "x"}]}
            )
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"
        assert malformed.status_code == 400
        assert "messages" in malformed.json()["error"]["message"]
        assert several.status_code == 400 and several.json()["error"]["param"] == "n"
        assert too_long.status_code == 400
        assert too_long.json()["error"]["code"] == "context_length_exceeded"
        assert bad_role.status_code == 400
        assert "role" in bad_role.json()["error"]["message"]

    async def test_max_tokens_above_the_cap_is_capped(self, engine_upstream: Upstream) -> None:
        """A `max_tokens` above the model's cap is not refused: the reply stops at the cap."""
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=engine_upstream.headers) as client:
            response = await client.post(
                f"{engine_upstream.v1_url}/chat/completions",
                json=chat_body("x", ENGINE_MAX_TOKENS_CAP * 10),
            )
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] <= ENGINE_MAX_TOKENS_CAP


class TestDisconnect:
    async def test_client_leaving_a_stream_aborts_the_generation(
        self, make_engine_upstream: Any
    ) -> None:
        """Closing the connection after the first token stops the generation at once: the
        abort counter goes up by one, a `request_aborted` line is logged, the scheduler's slot
        is free again, and the model still answers the next request."""
        upstream: Upstream = make_engine_upstream()
        assert upstream.aborted_requests() == 0
        body = chat_body(QUESTION, ENGINE_MAX_TOKENS_CAP, stream=True)
        async with (
            httpx.AsyncClient(timeout=TIMEOUT, headers=upstream.headers) as client,
            client.stream("POST", f"{upstream.v1_url}/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: ") and '"content":"' in line and '"role"' not in line:
                    break  # the first token arrived: leave
        upstream.wait_until(lambda: upstream.aborted_requests() == 1, what="one abort counted")
        upstream.wait_until(lambda: upstream.running_requests() == 0, what="slot freed")
        upstream.wait_until(lambda: "request_aborted" in upstream.log_text(), what="abort logged")
        finished = upstream.metric("ledgerchat_engine_generations_finished_total")
        assert finished == 0, "the aborted generation must not have run to its end"
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=upstream.headers) as client:
            again = await client.post(
                f"{upstream.v1_url}/chat/completions", json=chat_body(QUESTION, 2)
            )
        assert again.status_code == 200

    async def test_client_leaving_a_non_streamed_request_aborts_it(
        self, make_engine_upstream: Any
    ) -> None:
        """A non-streamed request whose client gives up (here: its read timeout) is cancelled
        too, not generated to the end for nobody."""
        upstream: Upstream = make_engine_upstream()
        # Started before the client's timer runs out: the first token comes from a running slot.
        body = chat_body(QUESTION, ENGINE_MAX_TOKENS_CAP)
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(120.0, read=0.5), headers=upstream.headers
        ) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(f"{upstream.v1_url}/chat/completions", json=body)
        upstream.wait_until(lambda: upstream.aborted_requests() == 1, what="one abort counted")
        upstream.wait_until(lambda: upstream.running_requests() == 0, what="slot freed")
        assert upstream.metric("ledgerchat_engine_generations_finished_total") == 0


class TestCommandLine:
    @pytest.fixture(autouse=True)
    def no_engine_env(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.chdir(tmp_path)  # no developer .env
        for name in ("API_KEY", "API_KEY_FILE", "HOST", "PORT"):
            monkeypatch.delenv(f"LEDGERCHAT_ENGINE_{name}", raising=False)

    def test_refuses_to_start_without_a_secret(self, capsys: pytest.CaptureFixture[str]) -> None:
        """No secret configured and no --no-auth: exit 2 naming the variables to set."""
        assert main(["engine", "serve"]) == 2
        assert "LEDGERCHAT_ENGINE_API_KEY" in capsys.readouterr().err

    def test_no_auth_only_on_loopback(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--no-auth on an address other hosts can reach is refused."""
        assert main(["engine", "serve", "--no-auth", "--host", "0.0.0.0"]) == 2
        assert "loopback" in capsys.readouterr().err

    def test_short_or_exposed_secrets_are_refused(
        self,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A secret under 16 characters, or a key file others can read, stops the start."""
        monkeypatch.setenv("LEDGERCHAT_ENGINE_API_KEY", "short")
        assert main(["engine", "serve"]) == 2
        assert "16" in capsys.readouterr().err
        key_file = tmp_path / "engine-key"
        key_file.write_text("a-long-enough-secret-value\n", encoding="utf-8")
        key_file.chmod(0o644)
        monkeypatch.delenv("LEDGERCHAT_ENGINE_API_KEY")
        monkeypatch.setenv("LEDGERCHAT_ENGINE_API_KEY_FILE", str(key_file))
        assert main(["engine", "serve"]) == 2
        assert "chmod 600" in capsys.readouterr().err

    def test_unknown_model_is_a_usage_error(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("LEDGERCHAT_ENGINE_API_KEY", "a-long-enough-secret-value")
        assert main(["engine", "serve", "--model", "no-such-model"]) == 2
        assert "no-such-model" in capsys.readouterr().err

    def test_a_model_that_cannot_load_stops_the_start(
        self,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A --model whose weights are missing: exit 1 with one line naming the model and the
        reason, before any port is bound."""
        monkeypatch.setenv("LEDGERCHAT_ENGINE_API_KEY", "a-long-enough-secret-value")
        catalog = tmp_path / "catalog.toml"
        catalog.write_text(engine_catalog(tmp_path / "no-weights-here"), encoding="utf-8")
        code = main(["engine", "serve", "--catalog", str(catalog), "--model", ENGINE_MODEL])
        assert code == 1
        err = capsys.readouterr().err
        assert "engine_server_start_failed" in err and "no-weights-here" in err
