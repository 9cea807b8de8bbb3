"""One request inside a scheduler (`Slot`), its per-row decoding state while it is in the
batch (`Row`: detokenizer, stop-string matcher, sampling generator), and what happens to it per
step once the forward and sampling are done: `accept_token` records a generated token, streams
its text and says whether the request finished (end-of-turn token, stop string, token limit);
`finish` flushes owed text and delivers the one `Finished` event with its timings. These touch
only the request, never the model, so the scheduler (admission, the batch, failures) calls them
after each prefill and decode step."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from inference.errors import OutOfMemory
from inference.events import Finished, FinishReason, StreamEvent, TextDelta, Timings
from inference.loading import LoadedModel
from inference.requests import SamplingParams
from inference.sampling import make_generator
from inference.text import IncrementalDetokenizer, StopStringMatcher


@dataclass(eq=False)
class Slot:
    """One request inside a scheduler. Only `cancel_requested` is written from other threads."""

    request_id: str
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    submitted_at: float  # time.monotonic() when the caller started the request
    deadline_at: float  # time.monotonic() after which the request ends with "timeout"
    deliver: Callable[[StreamEvent], None]
    model_id_answered: str
    fell_back_from: str | None = None
    cancel_requested: bool = False
    generated: list[int] = field(default_factory=list)
    reused_prompt_tokens: int = 0
    finish_reason: FinishReason | None = None
    admitted_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished: bool = False


class Row:
    """A slot's per-request decoding state while it is in the batch."""

    def __init__(self, slot: Slot, loaded: LoadedModel) -> None:
        self.slot = slot
        self.detokenizer = IncrementalDetokenizer(loaded.tokenizer)
        # The request's own stop strings, and the model's (the next turn of its frame).
        stops = (*slot.sampling.stop, *loaded.entry.prompting.all_stop_strings())
        self.stop_matcher = StopStringMatcher(stops)
        self.generator = make_generator(slot.sampling.seed, loaded.device)
        self.stop_string_hit = False


def accept_token(row: Row, token_id: int, stop_token_ids: Collection[int]) -> FinishReason | None:
    """Record one generated token and stream its text; the finish reason when the request
    ended with it (the caller then `finish`es it), else None."""
    slot = row.slot
    now = time.monotonic()
    if slot.first_token_at is None:
        slot.first_token_at = now
    slot.last_token_at = now
    slot.generated.append(token_id)
    if token_id in stop_token_ids:
        return "stop"
    text, hit_stop_string = row.stop_matcher.feed(row.detokenizer.push(token_id))
    if text:
        slot.deliver(TextDelta(text))
    if hit_stop_string:
        row.stop_string_hit = True
        return "stop"
    if len(slot.generated) >= slot.max_new_tokens:
        return "length"
    return None


def finish(
    slot: Slot,
    reason: FinishReason,
    row: Row | None,
    error: OutOfMemory | None = None,
    error_text: str | None = None,
) -> None:
    """End the request once (later calls do nothing): owed text, then its `Finished` event."""
    if slot.finished:
        return
    slot.finished = True
    slot.finish_reason = reason
    if row is not None and not row.stop_string_hit:
        # Text held back for an incomplete character or a possible stop string is owed.
        tail, _ = row.stop_matcher.feed(row.detokenizer.flush())
        tail += row.stop_matcher.flush()
        if tail:
            slot.deliver(TextDelta(tail))
    finished_at = time.monotonic()
    message = str(error) if error is not None else error_text
    slot.deliver(
        Finished(
            model_id_answered=slot.model_id_answered,
            prompt_tokens=len(slot.prompt_ids),
            completion_tokens=len(slot.generated),
            finish_reason=reason,
            error=message if reason == "error" else None,
            timings=_timings(slot, finished_at),
            fell_back_from=slot.fell_back_from,
            error_code=_error_code(reason, error),
            cached_prompt_tokens=slot.reused_prompt_tokens,
        )
    )


def _error_code(reason: FinishReason, error: OutOfMemory | None) -> str | None:
    if error is not None:
        return error.code
    return "generation_failed" if reason == "error" else None


def token_or_pad(token: int | Exception) -> int:
    """A failed row's placeholder next token (the row leaves the batch before it is fed)."""
    return 0 if isinstance(token, Exception) else token


def _timings(slot: Slot, finished_at: float) -> Timings:
    admitted_at = slot.admitted_at if slot.admitted_at is not None else finished_at
    decode_rate = None
    if (
        slot.first_token_at is not None
        and slot.last_token_at is not None
        and len(slot.generated) >= 2
        and slot.last_token_at > slot.first_token_at
    ):
        decode_rate = (len(slot.generated) - 1) / (slot.last_token_at - slot.first_token_at)
    first_token_ms = None
    if slot.first_token_at is not None:
        first_token_ms = (slot.first_token_at - slot.submitted_at) * 1000.0
    return Timings(
        queue_wait_ms=(admitted_at - slot.submitted_at) * 1000.0,
        time_to_first_token_ms=first_token_ms,
        decode_tokens_per_s=decode_rate,
        total_ms=(finished_at - slot.submitted_at) * 1000.0,
    )
