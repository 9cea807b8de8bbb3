"""The `remote` source kind of a catalog entry: a model served by another process that speaks the
OpenAI chat-completions protocol (vLLM, SGLang, llama-server, TGI, Ollama, `ledgerchat engine
serve`). Parsed from the catalog's `source` table; the API key itself is never in the file, only
the name of the environment variable that holds it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MAX_BASE_URLS = 16
MAX_TIMEOUT_S = 3600.0
MAX_CONCURRENT_PER_URL = 4096
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

REMOTE_KEYS = (
    "kind",
    "base_urls",
    "model",
    "api_key_env",
    "connect_timeout_s",
    "read_timeout_s",
    "max_concurrent_per_url",
    "tokenizer_path",
    "use_upstream_tokenize",
    "continuous_usage_stats",
    "extra_body",
)
# Fields of the request body that ledgerchat sets itself: billing depends on them.
RESERVED_BODY_FIELDS = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", "n"}
)


@dataclass(frozen=True)
class RemoteSource:
    """Where a remote model is served and how to talk to it."""

    base_urls: tuple[str, ...]
    """Root URLs of the servers (no `/v1`), e.g. http://10.0.0.5:8000; one model, same weights."""
    model: str
    """The model name the upstream serves (its `--served-model-name`)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the upstream's bearer key (None: no key)."""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    """Longest silence between two chunks (and before the first) before engine_timeout."""
    max_concurrent_per_url: int = 64
    """Requests in flight per URL; when every URL is full a new chat is refused (503)."""
    tokenizer_path: Path | None = None
    """A Hugging Face tokenizer directory or GGUF file: estimates and counts when the upstream
    has no /tokenize or sends no usage."""
    use_upstream_tokenize: bool = True
    """Ask the upstream's /tokenize (vLLM, llama-server, engine serve) for the exact prompt."""
    continuous_usage_stats: bool = True
    """Ask for usage in every chunk (a vLLM extension): exact counts when a stream is cut. Set
    false for a server that rejects unknown fields."""
    extra_body: tuple[tuple[str, Any], ...] = ()
    """Fields added to every chat request (e.g. vLLM's `ignore_eos`, `repetition_penalty`);
    never those that bound what is billed (max_tokens, stream_options, ...)."""


def parse_remote_source(raw: Mapping[str, Any], override_path: Path | None) -> RemoteSource:
    """The remote source of a catalog `source` table; ValueError names the bad field."""
    urls = raw.get("base_urls")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise ValueError("a remote source needs `base_urls`, a list of http(s) URLs")
    if len(urls) > MAX_BASE_URLS:
        raise ValueError(f"at most {MAX_BASE_URLS} base_urls")
    base_urls = tuple(_check_url(url) for url in urls)
    if len(set(base_urls)) != len(base_urls):
        raise ValueError("base_urls lists a URL twice")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("a remote source needs `model`, the name the upstream serves")
    api_key_env = raw.get("api_key_env")
    if api_key_env is not None and (
        not isinstance(api_key_env, str) or not _ENV_NAME.match(api_key_env)
    ):
        raise ValueError(
            "api_key_env must be the NAME of an environment variable (letters, digits, _), "
            "not the key itself"
        )
    tokenizer_text = raw.get("tokenizer_path")
    tokenizer_path: Path | None = None
    if tokenizer_text is not None:
        if not isinstance(tokenizer_text, str) or not tokenizer_text:
            raise ValueError("tokenizer_path must be a path")
        tokenizer_path = Path(tokenizer_text).expanduser()
        if not tokenizer_path.is_absolute() and override_path is not None:
            tokenizer_path = override_path.parent / tokenizer_path
    return RemoteSource(
        base_urls=base_urls,
        model=model,
        api_key_env=api_key_env,
        connect_timeout_s=_seconds(raw, "connect_timeout_s", 5.0),
        read_timeout_s=_seconds(raw, "read_timeout_s", 60.0),
        max_concurrent_per_url=_count(raw, "max_concurrent_per_url", 64),
        tokenizer_path=tokenizer_path,
        use_upstream_tokenize=_flag(raw, "use_upstream_tokenize", True),
        continuous_usage_stats=_flag(raw, "continuous_usage_stats", True),
        extra_body=_extra_body(raw.get("extra_body", {})),
    )


def _extra_body(raw: Any) -> tuple[tuple[str, Any], ...]:
    if not isinstance(raw, dict):
        raise ValueError("extra_body must be a table of request fields")
    reserved = sorted(RESERVED_BODY_FIELDS & set(raw))
    if reserved:
        raise ValueError(f"extra_body must not set {', '.join(reserved)}: ledgerchat sets them")
    return tuple(sorted(raw.items()))


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base URL {url!r} must be http:// or https:// with a host")
    if parts.query or parts.fragment:
        raise ValueError(f"base URL {url!r} must not have a query or fragment")
    root = url.rstrip("/")
    if root.endswith("/v1"):
        raise ValueError(f"base URL {url!r}: give the server's root, without /v1")
    return root


def _seconds(raw: Mapping[str, Any], name: str, default: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise ValueError(f"{name}={value} must be in (0, {MAX_TIMEOUT_S:g}]")
    return float(value)


def _count(raw: Mapping[str, Any], name: str, default: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    if not 1 <= value <= MAX_CONCURRENT_PER_URL:
        raise ValueError(f"{name}={value} must be between 1 and {MAX_CONCURRENT_PER_URL}")
    return value


def _flag(raw: Mapping[str, Any], name: str, default: bool) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value
