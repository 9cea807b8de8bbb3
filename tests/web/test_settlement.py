"""What a chat is billed when its stream ends, decided without a server: one row per way a
stream can end (finish reason, consumer left or not, policy), checked against the decision."""

from __future__ import annotations

from typing import Any

import pytest

from inference.events import Finished, Timings
from web.domain.billing.prices import ModelPrice
from web.domain.chat.settlement import Settlement, StreamEnd, decide_settlement

# 1 per message + ceil(prompt x 50 / 1000) + ceil(completion x 100 / 1000)
PRICE = ModelPrice(1, 50, 100, "v1")
FALLBACK_PRICE = ModelPrice(0, 0, 1000, "v2")
HOLD = 40
TIMINGS = Timings(
    queue_wait_ms=0, time_to_first_token_ms=None, decode_tokens_per_s=None, total_ms=0
)


def finished(
    reason: str, completion: int = 30, *, model: str = "m", error: str | None = None
) -> Finished:
    return Finished(
        model_id_answered=model,
        prompt_tokens=20,
        completion_tokens=completion,
        finish_reason=reason,  # type: ignore[arg-type]
        error=error,
        timings=TIMINGS,
    )


def end(final: Finished | None, **kwargs: Any) -> StreamEnd:
    return StreamEnd(model_id="m", estimated_prompt_tokens=18, finished=final, **kwargs)


# (case, stream end, partial capture policy, expected capture, release reason, finish reason,
#  completion tokens billed)
CASES = [
    ("stop: actual cost", end(finished("stop")), True, 1 + 1 + 3, None, "stop", 30),
    ("length: actual cost", end(finished("length")), True, 5, None, "length", 30),
    ("capped at the hold", end(finished("stop", 1000)), True, HOLD, None, "stop", 1000),
    ("engine error: release", end(finished("error", error="boom")), True, 0, "failed", "error", 30),
    ("timeout: release", end(finished("timeout")), True, 0, "timeout", "timeout", 30),
    (
        "error while the consumer left: release, never billed",
        end(finished("error"), stopped="aborted", streamed_deltas=3),
        True,
        0,
        "failed",
        "error",
        30,
    ),
    (
        "timeout while the consumer left",
        end(finished("timeout"), stopped="aborted"),
        True,
        0,
        "timeout",
        "timeout",
        30,
    ),
    (
        "disconnect, engine count known: partial capture of it",
        end(finished("cancelled", 7), stopped="aborted", streamed_deltas=3),
        True,
        1 + 1 + 1,
        None,
        "cancelled",
        7,
    ),
    (
        "disconnect, no engine count: bill the streamed deltas",
        end(None, stopped="aborted", streamed_deltas=12),
        True,
        1 + 1 + 2,
        None,
        "cancelled",
        12,
    ),
    (
        "Stop after the engine finished: the finish reason and the whole cost are kept",
        end(finished("stop"), stopped="aborted", streamed_deltas=3),
        True,
        5,
        None,
        "stop",
        30,
    ),
    (
        "disconnect after the engine hit its length: a whole reply, whatever the policy",
        end(finished("length"), stopped="aborted", streamed_deltas=30),
        False,
        5,
        None,
        "length",
        30,
    ),
    (
        "shutdown cut a stream whose engine had finished: billed as finished",
        end(finished("stop"), stopped="cancelled", closing=True),
        True,
        5,
        None,
        "stop",
        30,
    ),
    (
        "disconnect, policy releases",
        end(finished("cancelled", 7), stopped="aborted"),
        False,
        0,
        "aborted",
        "cancelled",
        7,
    ),
    (
        "shutdown cut the consumer: release",
        end(None, stopped="cancelled", streamed_deltas=5, closing=True),
        True,
        0,
        "cancelled",
        "cancelled",
        5,
    ),
    (
        "engine cancelled it while shutting down",
        end(finished("cancelled"), closing=True),
        True,
        0,
        "cancelled",
        "cancelled",
        30,
    ),
    (
        "engine cancelled it otherwise",
        end(finished("cancelled")),
        True,
        0,
        "aborted",
        "cancelled",
        30,
    ),
]


class TestDecideSettlement:
    @pytest.mark.parametrize(
        ("stream_end", "partial", "capture", "release", "finish", "completion"),
        [case[1:] for case in CASES],
        ids=[case[0] for case in CASES],
    )
    def test_table(
        self,
        stream_end: StreamEnd,
        partial: bool,
        capture: int,
        release: str | None,
        finish: str,
        completion: int,
    ) -> None:
        """Each way a stream ends is billed as the table says: capture the cost (at most the
        hold) or release in full, with the reason and the tokens billed."""
        decision = decide_settlement(stream_end, PRICE, HOLD, partial)
        assert (
            decision.capture_credits,
            decision.release_reason,
            decision.finish_reason,
            decision.completion_tokens,
        ) == (capture, release, finish, completion)

    def test_prompt_tokens_are_the_engines_when_known_else_the_estimate(self) -> None:
        """The engine's exact prompt count is billed; without a final event, the estimate."""
        known = decide_settlement(end(finished("stop")), PRICE, HOLD, True)
        unknown = decide_settlement(end(None, stopped="aborted"), PRICE, HOLD, True)
        assert (known.prompt_tokens, unknown.prompt_tokens) == (20, 18)

    def test_the_answering_model_is_named_and_its_error_kept(self) -> None:
        """A fallback's answer names the fallback; an engine error's text is carried along."""
        decision = decide_settlement(
            end(finished("error", model="fallback", error="out of memory")),
            FALLBACK_PRICE,
            HOLD,
            True,
        )
        assert decision == Settlement(
            capture_credits=0,
            release_reason="failed",
            model_answered="fallback",
            prompt_tokens=20,
            completion_tokens=30,
            finish_reason="error",
            error="out of memory",
        )

    def test_a_free_answer_captures_nothing_and_names_no_release(self) -> None:
        """A zero price captures 0 credits without a release reason (the hold is released)."""
        decision = decide_settlement(end(finished("stop")), ModelPrice(0, 0, 0, "free"), HOLD, True)
        assert (decision.capture_credits, decision.release_reason) == (0, None)
