"""What the engine reports: stream events (text deltas, then one Finished) and model status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from inference.catalog import Quantization

FinishReason = Literal["stop", "length", "cancelled", "timeout", "error"]
TokenCountSource = Literal["engine", "upstream", "local"]


@dataclass(frozen=True)
class TextDelta:
    """Newly decoded text; never splits a multi-byte character."""

    text: str


@dataclass(frozen=True)
class Timings:
    """Where the time of one request went. time_to_first_token_ms counts from submission;
    None when no token was produced."""

    queue_wait_ms: float
    time_to_first_token_ms: float | None
    decode_tokens_per_s: float | None
    total_ms: float


@dataclass(frozen=True)
class Finished:
    """The last event of every stream: exact token counts for billing, and why it ended.
    With finish_reason "error", `error` says what happened and `error_code` is
    "out_of_memory" (memory was freed; a smaller model is suggested) or "generation_failed"."""

    model_id_answered: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    error: str | None
    timings: Timings
    fell_back_from: str | None = None
    error_code: str | None = None
    cached_prompt_tokens: int = 0
    """Prompt tokens whose keys and values came from the prefix cache (not recomputed)."""
    token_count_source: TokenCountSource = "engine"
    """Where the counts come from: "engine" (this process's engine, exact), "upstream" (a remote
    engine's `usage`, exact), "local" (a remote engine sent no usage: counted here with the
    catalog entry's tokenizer, or its chunks when it has none)."""


StreamEvent = TextDelta | Finished


@dataclass(frozen=True)
class ModelStatus:
    """One catalog model as it stands now."""

    id: str
    display_name: str
    available: bool
    unavailable_reason: str | None
    how_to_provide: str | None
    quantization: Quantization
    loaded: bool
    memory_bytes: int | None
    fallback_model_id: str | None
    context_limit_tokens: int
    max_new_tokens_cap: int
    fallback_on_v1: bool = False
    """The catalog lets /v1 answer with `fallback_model_id` when this model cannot."""
    loading_percent: int | None = None
    """While a load of this model is in flight: how far it has come, its preparation (a GGUF
    hashed and converted) included, 0-99; None otherwise."""
    loading_stage: str | None = None
    """While a load is in flight: what it is doing now ("converting: weights")."""
