"""How a catalog model is prompted and kept from looping: the `Prompting` settings of a catalog
entry (prompt format, extra stop strings, repetition guard, default reply length), their
validation, and the frames a conversation is laid out in before tokenization.

Two formats. `chat` is for instruction-tuned models: the tokenizer's own chat template when it
has one, else Gemma's turn format. `completion` is for base models, which were never taught a
turn format and, behind one, echo the question and run on to the token limit: the conversation
becomes a plain-text dialogue (`User:` / `Assistant:` lines after a one-line preamble), which a
base model continues naturally, and the next `User:` line it starts is the end of its reply.

A frame is a list of segments, each either template text (special-token strings in it become
special tokens) or message content (encoded so that it cannot forge a turn boundary)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from inference.requests import MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS, ChatMessage

PromptFormat = Literal["chat", "completion"]
PROMPT_FORMATS: tuple[PromptFormat, ...] = ("chat", "completion")
MIN_REPETITION_PENALTY = 1.0
MAX_REPETITION_PENALTY = 2.0
MAX_NO_REPEAT_NGRAM_SIZE = 16

# The completion frame. The speaker names open lines, so a reply ends where the model starts
# the next line of either speaker; both are stop strings of every completion-format model.
USER_LABEL = "User:"
ASSISTANT_LABEL = "Assistant:"
COMPLETION_STOP_STRINGS: tuple[str, ...] = (f"\n{USER_LABEL}", f"\n{ASSISTANT_LABEL}")
# One worked exchange shows the model the Assistant's part (answer, not chat back as a
# user would); it is part of the default preamble, which a system message replaces.
DEFAULT_PREAMBLE = (
    "A conversation between a User and a helpful, knowledgeable Assistant. The Assistant "
    "answers each question directly and correctly in a few sentences.\n\n"
    "User: What is the capital of Italy?\n"
    "Assistant: The capital of Italy is Rome, a city known for its long history and its art."
)

# Which fields of a catalog entry belong to prompting (flat in the TOML so that an operator
# file or env override can change one of them without restating the others).
PROMPTING_FIELDS = (
    "prompt_format",
    "stop_strings",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "default_max_new_tokens",
)


class PromptingError(ValueError):
    """A prompting field is out of range; the catalog reports it as a CatalogError."""


@dataclass(frozen=True)
class Prompting:
    """How one model is prompted. `repetition_penalty` divides (or, when negative, multiplies)
    the logit of every token the reply already holds (1.0: off); `no_repeat_ngram_size` n bans
    the token that would repeat an n-token sequence of the reply (0: off).
    `default_max_new_tokens` is the reply length when a request names none (None: the cap;
    never more than the cap)."""

    prompt_format: PromptFormat = "chat"
    stop_strings: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    default_max_new_tokens: int | None = None

    @property
    def guards_repetition(self) -> bool:
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0

    def all_stop_strings(self) -> tuple[str, ...]:
        """The entry's stop strings, after the frame's own turn markers."""
        frame = COMPLETION_STOP_STRINGS if self.prompt_format == "completion" else ()
        return tuple(dict.fromkeys((*frame, *self.stop_strings)))


def parse_prompting(raw: Mapping[str, Any], max_new_tokens_limit: int) -> Prompting:
    """The prompting fields of one raw catalog entry, validated; PromptingError names the
    first field that breaks its rule. A default reply length above the entry's own cap is
    allowed (the cap wins), so lowering the cap alone, e.g. from the env, stays valid."""
    prompt_format = raw.get("prompt_format", "chat")
    if prompt_format not in PROMPT_FORMATS:
        raise PromptingError(f"prompt_format={prompt_format!r} must be chat or completion")
    stops = raw.get("stop_strings", [])
    if not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS - 2:
        raise PromptingError(f"stop_strings must be a list of at most {MAX_STOP_STRINGS - 2}")
    for text in stops:
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_STOP_STRING_CHARS:
            raise PromptingError(
                f"stop string {text!r} must be a string of 1..{MAX_STOP_STRING_CHARS} chars"
            )
    penalty = raw.get("repetition_penalty", 1.0)
    if (
        isinstance(penalty, bool)
        or not isinstance(penalty, (int, float))
        or not math.isfinite(penalty)
        or not MIN_REPETITION_PENALTY <= penalty <= MAX_REPETITION_PENALTY
    ):
        raise PromptingError(
            f"repetition_penalty={penalty!r} must be a number from "
            f"{MIN_REPETITION_PENALTY} (off) to {MAX_REPETITION_PENALTY}"
        )
    ngram = raw.get("no_repeat_ngram_size", 0)
    if (
        isinstance(ngram, bool)
        or not isinstance(ngram, int)
        or ngram == 1
        or not 0 <= ngram <= MAX_NO_REPEAT_NGRAM_SIZE
    ):
        # n=1 would ban every token already used once: no reply could reuse "the".
        raise PromptingError(
            f"no_repeat_ngram_size={ngram!r} must be 0 (off) or 2..{MAX_NO_REPEAT_NGRAM_SIZE}"
        )
    default_max = raw.get("default_max_new_tokens")
    if default_max is not None and (
        isinstance(default_max, bool)
        or not isinstance(default_max, int)
        or not 1 <= default_max <= max_new_tokens_limit
    ):
        raise PromptingError(
            f"default_max_new_tokens={default_max!r} must be an integer 1..{max_new_tokens_limit}"
        )
    return Prompting(
        prompt_format=cast(PromptFormat, prompt_format),
        stop_strings=tuple(stops),
        repetition_penalty=float(penalty),
        no_repeat_ngram_size=ngram,
        default_max_new_tokens=default_max,
    )


@dataclass(frozen=True)
class Segment:
    """A piece of a prompt: template text, or a message's content."""

    text: str
    is_content: bool


def completion_frame(messages: Sequence[ChatMessage]) -> list[Segment]:
    """A conversation as a plain-text dialogue that ends with an open `Assistant:` line:

        {system text, else DEFAULT_PREAMBLE}\\n\\nUser: {text}\\nAssistant: {reply}\\n...
        User: {text}\\nAssistant:

    No space after the last `Assistant:`: SentencePiece tokens carry their leading space, so
    the model's first token brings it (a trailing space would push it off its usual tokens)."""
    preamble = DEFAULT_PREAMBLE
    segments: list[Segment] = []
    for message in messages:
        if message.role == "system":
            preamble = message.content.strip() or DEFAULT_PREAMBLE
            continue
        label = USER_LABEL if message.role == "user" else ASSISTANT_LABEL
        segments.append(Segment(f"\n{label} ", is_content=False))
        segments.append(Segment(message.content.strip(), is_content=True))
    return [
        Segment(preamble, is_content=True),
        Segment("\n", is_content=False),
        *segments,
        Segment(f"\n{ASSISTANT_LABEL}", is_content=False),
    ]


# Private-use characters mark where each message's content sits in a rendered chat template,
# so that content can be encoded apart from the template text around it.
_MARK_OPEN = "\ue000"
_MARK_CLOSE = "\ue001"


def template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """The messages for a chat template, each content replaced by a numbered marker."""
    return [
        {"role": message.role, "content": f"{_MARK_OPEN}{index}{_MARK_CLOSE}"}
        for index, message in enumerate(messages)
    ]


def split_rendered_template(rendered: str, messages: Sequence[ChatMessage]) -> list[Segment] | None:
    """The rendered template cut into template text and the messages' contents, or None when
    the template did not keep every marker exactly once, in order (then it is not used)."""
    segments: list[Segment] = []
    rest = rendered
    for index, message in enumerate(messages):
        marker = f"{_MARK_OPEN}{index}{_MARK_CLOSE}"
        before, found, after = rest.partition(marker)
        if not found or marker in after:
            return None
        segments.append(Segment(before, is_content=False))
        segments.append(Segment(message.content, is_content=True))
        rest = after
    if _MARK_OPEN in rest:
        return None
    segments.append(Segment(rest, is_content=False))
    return [segment for segment in segments if segment.text]
