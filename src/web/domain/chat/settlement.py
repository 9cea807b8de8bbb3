"""What to bill when a chat's stream ends, as a pure function of how it ended (the engine's
final event, whether the consumer left and why, the deltas streamed), the price, the hold and
the disconnect policy. No I/O: `turn.py` resolves the hold as decided here.

- finished normally (`stop`, `length`): capture the actual cost (never more than the hold),
  with that finish reason, even when the consumer left after the engine had finished (the
  reply was complete; only its reading was cut);
- the consumer stopped (disconnect, Stop) while generating: capture what was generated, or
  release all, per `partial_capture_on_disconnect`; shutdown (`cancelled`) always releases;
- engine error or timeout (whoever left first): release in full, never billed.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from inference.events import Finished
from web.domain.billing.prices import ModelPrice
from web.domain.chat.pricing import cost_credits

StopReason = Literal["aborted", "cancelled"]
"""Why a generation was ended early: `aborted` (client disconnect, Stop) or `cancelled`
(shutdown cut it after its grace)."""

_RELEASE_OF_FAILURE = {"error": "failed", "timeout": "timeout"}
_COMPLETED = frozenset({"stop", "length"})
# A remote engine's failure is released under its own name (the Finished event's error_code).
_ENGINE_FAILURES = frozenset({"engine_unavailable", "engine_timeout", "engine_error"})


@dataclasses.dataclass(frozen=True)
class StreamEnd:
    """How a chat's stream ended."""

    model_id: str
    """The model that was to answer (used when the engine gave no final event)."""
    estimated_prompt_tokens: int
    finished: Finished | None
    """The engine's final event with exact counts; None when it never came."""
    stopped: StopReason | None = None
    """Set when the generation was asked to end early: the consumer left (`aborted`) or
    shutdown cut it (`cancelled`)."""
    streamed_deltas: int = 0
    """Non-empty deltas the engine produced before it ended; each is at least one token."""
    closing: bool = False
    """The service is shutting down."""


@dataclasses.dataclass(frozen=True)
class Settlement:
    """The decision: capture `capture_credits` (> 0), or release the hold in full."""

    capture_credits: int
    release_reason: str | None
    """Why the hold is released in full; None for a capture (or a zero-cost answer)."""
    model_answered: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    error: str | None = None
    token_count_source: str = "engine"
    """"engine"/"upstream": exact counts; "local": counted here (recorded with the capture)."""


def answering_model(end: StreamEnd) -> str:
    """The model whose price applies: the one that answered, per the engine."""
    return end.finished.model_id_answered if end.finished is not None else end.model_id


def decide_settlement(
    end: StreamEnd, price: ModelPrice, hold_credits: int, partial_capture_on_disconnect: bool
) -> Settlement:
    """What to bill for a stream that ended as `end`, at `price` (the answering model's)."""
    finished = end.finished
    prompt_tokens = end.estimated_prompt_tokens if finished is None else finished.prompt_tokens
    completion_tokens = 0 if finished is None else finished.completion_tokens
    finish_reason = "cancelled" if finished is None else finished.finish_reason
    release_reason: str | None = None
    if finish_reason in _RELEASE_OF_FAILURE:
        # Cut by a failure (even if the consumer left at the same time): never billed.
        code = finished.error_code if finished is not None else None
        release_reason = code if code in _ENGINE_FAILURES else _RELEASE_OF_FAILURE[finish_reason]
    elif finish_reason in _COMPLETED:
        # The engine finished before the stop reached it: a whole reply, billed as one.
        pass
    elif end.stopped is not None:
        if finished is None:
            # No final count from the engine: bill the deltas streamed; each is at least one
            # generated token, so this never bills more than was generated.
            completion_tokens = end.streamed_deltas
        finish_reason = "cancelled"
        if end.stopped == "cancelled" or not partial_capture_on_disconnect:
            release_reason = end.stopped
    elif finish_reason == "cancelled":
        release_reason = "cancelled" if end.closing else "aborted"
    capture = 0
    if release_reason is None:
        capture = min(cost_credits(price, prompt_tokens, completion_tokens), hold_credits)
    return Settlement(
        capture_credits=capture,
        release_reason=release_reason,
        model_answered=answering_model(end),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason,
        error=None if finished is None else finished.error,
        token_count_source="engine" if finished is None else finished.token_count_source,
    )
