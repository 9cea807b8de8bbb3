"""`ledgerchat eval replies`: does a model end its replies by itself, without looping? Runs a
prompt list (the one shipped in this package, or a file) through the engine, greedy, and
measures the share of replies that ended by themselves (finish reason `stop`), the share that
loop, the share that only echo the question, and the median reply length in tokens.

The metric functions are pure, so they are tested on fixed texts."""

from __future__ import annotations

import asyncio
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.engine import Engine
from inference.events import TextDelta
from inference.requests import ChatMessage, GenerationRequest, SamplingParams

DEFAULT_PROMPTS_PATH = Path(__file__).with_name("eval_prompts.txt")
MAX_PROMPTS = 1_000
MAX_PROMPT_CHARS = 2_000
# A loop: a line of at least LOOP_LINE_CHARS characters, or a sequence of LOOP_WORDS words,
# occurring LOOP_OCCURRENCES times or more in one reply.
LOOP_LINE_CHARS = 8
LOOP_WORDS = 8
LOOP_OCCURRENCES = 3
# The eval measures how replies end, not latency: on a busy machine the engine's default
# deadline would cut replies off with "timeout", which is neither ending nor running on.
EVAL_DEADLINE_S = 3_600.0


class PromptListError(ValueError):
    """The prompt file is missing, empty or too large."""


class ReplyFailed(RuntimeError):
    """A prompt's generation ended with an error: the figures would be meaningless."""


@dataclass(frozen=True)
class ReplyResult:
    """One prompt's greedy reply."""

    prompt: str
    text: str
    finish_reason: str
    completion_tokens: int


def load_prompts(path: Path | None = None) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    source = DEFAULT_PROMPTS_PATH if path is None else path
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptListError(f"prompt file {source} cannot be read: {exc}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not prompts:
        raise PromptListError(f"prompt file {source} holds no prompts")
    if len(prompts) > MAX_PROMPTS:
        raise PromptListError(f"prompt file {source} holds over {MAX_PROMPTS} prompts")
    if any(len(prompt) > MAX_PROMPT_CHARS for prompt in prompts):
        raise PromptListError(f"a prompt in {source} is over {MAX_PROMPT_CHARS} characters")
    return prompts


def is_looping(text: str) -> bool:
    """True when a line of LOOP_LINE_CHARS+ characters, or a LOOP_WORDS-word sequence
    (overlapping ones count), occurs LOOP_OCCURRENCES+ times. Words are compared without
    case and punctuation, so 'Paris.' and 'paris,' repeat each other."""
    lines = Counter(line.strip() for line in text.splitlines())
    if any(len(line) >= LOOP_LINE_CHARS and n >= LOOP_OCCURRENCES for line, n in lines.items()):
        return True
    words = _normalized(text).split()
    sequences = Counter(
        tuple(words[start : start + LOOP_WORDS]) for start in range(len(words) - LOOP_WORDS + 1)
    )
    return any(n >= LOOP_OCCURRENCES for n in sequences.values())


def _normalized(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def only_echoes(prompt: str, reply: str) -> bool:
    """True when the reply holds no words beyond the question's own (an empty reply too)."""
    reply_words = _normalized(reply)
    return not reply_words or reply_words in _normalized(prompt)


def summarize(results: Sequence[ReplyResult]) -> dict[str, Any]:
    """The figures of a run: shares in [0, 1] rounded to 3 places, the median reply tokens."""
    count = len(results)
    if count == 0:
        raise ValueError("no results to summarize")

    def share(flags: list[bool]) -> float:
        return round(sum(flags) / count, 3)

    return {
        "prompts": count,
        "self_ended_share": share([r.finish_reason == "stop" for r in results]),
        "loop_share": share([is_looping(r.text) for r in results]),
        "echo_share": share([only_echoes(r.prompt, r.text) for r in results]),
        "median_completion_tokens": statistics.median(r.completion_tokens for r in results),
    }


async def run_replies(
    engine: Engine,
    model_id: str,
    prompts: Sequence[str],
    max_new_tokens: int | None,
    concurrency: int,
) -> list[ReplyResult]:
    """Each prompt as a one-turn conversation, greedy, `concurrency` at a time (the engine
    batches them; a row's greedy output does not depend on its batch)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, prompt: str) -> ReplyResult:
        async with gate:
            request = GenerationRequest(
                model_id=model_id,
                messages=(ChatMessage("user", prompt),),
                sampling=SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens),
                deadline_s=EVAL_DEADLINE_S,
                request_id=f"eval-replies-{index}",
            )
            text = ""
            stream = engine.stream(request)
            async for event in stream:
                if isinstance(event, TextDelta):
                    text += event.text
            finished = stream.finished
            if finished is None or finished.finish_reason == "error":
                error = finished.error if finished is not None else "no final event"
                raise ReplyFailed(f"prompt {index} ({prompt[:40]!r}) failed: {error}")
            return ReplyResult(prompt, text, finished.finish_reason, finished.completion_tokens)

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
