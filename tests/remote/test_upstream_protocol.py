"""What the remote backend relies on from an upstream, checked on every kind the `upstream`
fixture offers (`ledgerchat engine serve` always; a real vLLM when configured, `-m vllm`), so
that ledgerchat's own engine server and vLLM are interchangeable behind a `remote` catalog
entry: `/v1/models` reports `max_model_len`; `/tokenize` counts exactly the prompt tokens a
completion reports in its usage chunk; a wrong key is refused; a client that leaves a stream
aborts the upstream request (counted or logged) and frees its slot."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.remote.upstreams import Upstream

pytestmark = [pytest.mark.slow, pytest.mark.live]
TIMEOUT = httpx.Timeout(600.0)
MESSAGES = [{"role": "user", "content": "Tell me about the sea"}]


def data_lines(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


class TestUpstreamProtocol:
    async def test_models_report_max_model_len(self, upstream: Upstream) -> None:
        """/v1/models lists the model with its context limit as `max_model_len`."""
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=upstream.headers) as client:
            response = await client.get(f"{upstream.v1_url}/models")
        assert response.status_code == 200
        limits = {model["id"]: model.get("max_model_len") for model in response.json()["data"]}
        assert limits[upstream.model] == upstream.context_limit_tokens

    async def test_tokenize_counts_the_prompt_tokens_of_the_usage_chunk(
        self, upstream: Upstream
    ) -> None:
        """`/tokenize` of a chat gives the count the completion of the same chat reports as
        `prompt_tokens` in its final usage chunk (empty `choices`), before `[DONE]`."""
        async with httpx.AsyncClient(timeout=TIMEOUT, headers=upstream.headers) as client:
            tokenized = await client.post(
                f"{upstream.base_url}/tokenize",
                json={"model": upstream.model, "messages": MESSAGES, "add_generation_prompt": True},
            )
            streamed = await client.post(
                f"{upstream.v1_url}/chat/completions",
                json={
                    "model": upstream.model,
                    "messages": MESSAGES,
                    "max_tokens": 4,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
            )
        assert tokenized.status_code == 200, tokenized.text
        count = tokenized.json()["count"]
        assert count == len(tokenized.json()["tokens"])
        lines = data_lines(streamed.text)
        assert lines[-1] == "[DONE]"
        final = json.loads(lines[-2])
        assert final["choices"] == []
        assert final["usage"]["prompt_tokens"] == count
        assert 1 <= final["usage"]["completion_tokens"] <= 4

    async def test_a_wrong_key_is_refused(self, upstream: Upstream) -> None:
        """/v1 answers 401 to a wrong bearer secret."""
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.get(
                f"{upstream.v1_url}/models",
                headers={"Authorization": f"Bearer {upstream.api_key}-wrong"},
            )
        assert response.status_code == 401

    async def test_leaving_a_stream_aborts_the_upstream_request(self, upstream: Upstream) -> None:
        """Closing the connection after the first token: the upstream counts (or logs) one
        abort and its running requests go back to zero, long before the reply could have
        reached its limit."""
        before = upstream.aborted_requests()
        body = {
            "model": upstream.model,
            "messages": MESSAGES,
            "max_tokens": min(400, upstream.context_limit_tokens // 2),
            "temperature": 0,
            "stream": True,
        }
        async with (
            httpx.AsyncClient(timeout=TIMEOUT, headers=upstream.headers) as client,
            client.stream("POST", f"{upstream.v1_url}/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if '"content":"' in line and '"role"' not in line:
                    break
        upstream.wait_until(lambda: upstream.aborted_requests() == before + 1, 120, "abort seen")
        upstream.wait_until(lambda: upstream.running_requests() == 0, 120, "slot freed")
