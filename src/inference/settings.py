"""Inference settings: one dataclass, every field with a default and a LEDGERCHAT_INFERENCE_* env
override, read once by `InferenceSettings.from_env()`. No other module reads os.environ."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "LEDGERCHAT_INFERENCE_"
# The longest default deadline, as for a request's own deadline_s.
MAX_DEFAULT_DEADLINE_S = 24 * 3600.0


def _default_data_dir(environ: Mapping[str, str]) -> Path:
    data_dir = environ.get("LEDGERCHAT_DATA_DIR")
    if data_dir:
        return Path(data_dir)
    return Path.home() / ".cache" / "ledgerchat"


@dataclass(frozen=True)
class InferenceSettings:
    """How the engine loads models and bounds its work."""

    cache_dir: Path = Path.home() / ".cache" / "ledgerchat" / "models"
    """Where converted models (GGUF dequantized to safetensors) are kept, keyed by source hash."""

    models_dir: Path | None = None
    """Optional folder with one Hugging Face model directory per catalog id (`<dir>/<id>`)."""

    hf_cache_dir: Path | None = None
    """Hugging Face hub cache for repo ids (offline); None: huggingface_hub's default."""

    queue_limit: int = 32
    """Requests that may wait per model before new ones fail at once with EngineBusy."""

    max_batch_size: int = 8
    """Requests decoded together per model (continuous batching); the rest wait in the queue."""

    default_deadline_s: float = 300.0
    """Deadline for a request that names none; it then ends with finish_reason 'timeout'."""

    max_prompt_messages: int = 256
    """Messages per request; more is an InvalidRequest."""

    max_message_chars: int = 100_000
    """Characters per message; more is an InvalidRequest (tokenizing huge text is costly)."""

    prefix_cache_bytes: int = 256 * 2**20
    """Per model, memory for finished conversations' KV caches reused by their next turn; 0: off."""

    torch_threads: int | None = None
    """torch intra-op threads; None leaves torch's default (one per core)."""

    def __post_init__(self) -> None:
        if self.queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        if not 1 <= self.max_batch_size <= 256:
            raise ValueError("max_batch_size must be between 1 and 256")
        deadline = self.default_deadline_s
        if (
            isinstance(deadline, bool)
            or not isinstance(deadline, (int, float))
            or not math.isfinite(deadline)
            or not 0 < deadline <= MAX_DEFAULT_DEADLINE_S
        ):
            # NaN compares false with everything: it would silently disable every deadline.
            raise ValueError(
                f"default_deadline_s={deadline!r} must be a finite number of seconds in "
                f"(0, {MAX_DEFAULT_DEADLINE_S:.0f}]"
            )
        if self.max_prompt_messages < 1 or self.max_message_chars < 1:
            raise ValueError("max_prompt_messages and max_message_chars must be at least 1")
        if self.prefix_cache_bytes < 0:
            raise ValueError("prefix_cache_bytes must be 0 (off) or more")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError("torch_threads must be at least 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InferenceSettings:
        """Defaults, overridden by LEDGERCHAT_INFERENCE_<FIELD> (e.g. ..._QUEUE_LIMIT=64)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "cache_dir": _default_data_dir(env) / "models",
        }
        for field in fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(field.name, raw)
        return cls(**values)


_PATH_FIELDS = {"cache_dir", "models_dir", "hf_cache_dir"}
_INT_FIELDS = {
    "queue_limit",
    "max_batch_size",
    "max_prompt_messages",
    "max_message_chars",
    "prefix_cache_bytes",
}


def _parse(name: str, raw: str) -> Any:
    try:
        if name in _PATH_FIELDS:
            return Path(raw).expanduser()
        if name in _INT_FIELDS:
            return int(raw)
        if name == "torch_threads":
            return int(raw)
        if name == "default_deadline_s":
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not valid: {exc}") from exc
    raise AssertionError(f"unhandled settings field {name}")
