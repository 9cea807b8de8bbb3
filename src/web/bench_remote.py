"""`ledgerchat bench service --engine-url URL`: the service bench in front of a remote engine (an
OpenAI-compatible server: vLLM, `ledgerchat engine serve`, ...). A scratch catalog names the
upstream as one `remote` model; the direct measure is the same greedy request sent straight to
the upstream's /v1/chat/completions (streamed, with the same HTTP client as the SSE runs), so the
ratio compares the same reply length both ways. `ignore_eos` is sent both ways (vLLM honours it;
servers that do not know it ignore it), so a reply does not end early in one run and not the
other."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx

from inference.remote.wire import data_lines, parse_chunk

BENCH_MODEL_ID = "bench-remote"
BENCH_PRICE = (
    "per_message_credits = 1\n"
    "prompt_credits_per_1k_tokens = 1\n"
    "completion_credits_per_1k_tokens = 2"
)


class BenchSetupError(RuntimeError):
    """The upstream cannot be benchmarked (unreachable, serves no model, key missing)."""


def upstream_root(url: str) -> str:
    """The server's root from what an operator may pass (with or without /v1)."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def api_headers(key_env: str | None) -> dict[str, str]:
    if key_env is None:
        return {}
    key = os.environ.get(key_env)
    if not key:
        raise BenchSetupError(f"--engine-api-key-env names {key_env}, which is not set")
    return {"Authorization": f"Bearer {key}"}


def served_model(root: str, headers: dict[str, str], wanted: str | None) -> str:
    """`wanted`, checked against the upstream's /v1/models, or the first model it serves."""
    try:
        response = httpx.get(f"{root}/v1/models", headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise BenchSetupError(f"{root}/v1/models is unreachable: {exc}") from None
    if response.status_code != 200:
        raise BenchSetupError(f"{root}/v1/models answered HTTP {response.status_code}")
    served = [str(item.get("id")) for item in response.json().get("data", [])]
    if not served:
        raise BenchSetupError(f"{root} serves no model")
    if wanted is None:
        return served[0]
    if wanted not in served:
        raise BenchSetupError(f"{root} does not serve {wanted!r} (it serves {', '.join(served)})")
    return wanted


def write_bench_catalog(
    scratch: Path, root: str, upstream_model: str, key_env: str | None, max_tokens: int
) -> Path:
    """A catalog with the upstream as model `bench-remote`, and its price."""
    fields = [
        'kind = "remote"',
        f"base_urls = [{json.dumps(root)}]",
        f"model = {json.dumps(upstream_model)}",
        "read_timeout_s = 600",
        "max_concurrent_per_url = 64",
        "extra_body = { ignore_eos = true }",
    ]
    if key_env is not None:
        fields.append(f"api_key_env = {json.dumps(key_env)}")
    path = scratch / "bench-catalog.toml"
    path.write_text(
        f"""[[models]]
id = "{BENCH_MODEL_ID}"
display_name = "remote engine under bench"
source = {{ {", ".join(fields)} }}
max_new_tokens_cap = {max(max_tokens, 16)}

[prices."{BENCH_MODEL_ID}"]
{BENCH_PRICE}
""",
        encoding="utf-8",
    )
    return path


async def upstream_stream(
    client: httpx.AsyncClient,
    root: str,
    upstream_model: str,
    headers: dict[str, str],
    prompt: str,
    max_tokens: int,
) -> tuple[int, float]:
    """One greedy streamed request straight to the upstream: (completion tokens from its
    usage, seconds from the call to the last chunk)."""
    body = {
        "model": upstream_model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    started = time.perf_counter()
    tokens = 0
    async with client.stream(
        "POST", f"{root}/v1/chat/completions", json=body, headers=headers
    ) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"the upstream answered {response.status_code}: {response.text}")
        async for payload in data_lines(response.aiter_lines()):
            chunk = parse_chunk(payload)
            if chunk is None:
                break
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    return tokens, time.perf_counter() - started


__all__ = [
    "BENCH_MODEL_ID",
    "BenchSetupError",
    "api_headers",
    "served_model",
    "upstream_root",
    "upstream_stream",
    "write_bench_catalog",
]
