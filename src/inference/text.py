"""Text on both sides of the model: prompts encoded in the model's frame (see `prompting`),
with Gemma's turn format as the built-in chat frame, incremental
detokenization that never splits a multi-byte character, and stop-string matching that holds
back text which might still become a stop string.

The tokenizer is wrapped with a lock because the event loop encodes prompts while a scheduler
thread decodes tokens, and Hugging Face tokenizers are not documented as thread-safe."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from inference.prompting import (
    Prompting,
    Segment,
    completion_frame,
    split_rendered_template,
    template_messages,
)
from inference.requests import ChatMessage

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
# Gemma names the assistant's role "model" in its template.
_TEMPLATE_ROLE = {"user": "user", "assistant": "model"}
_REPLACEMENT_CHARACTER = "\ufffd"


class TokenizerAdapter:
    """The few tokenizer operations the engine needs, serialised by one lock."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self.bos_token_id: int | None = tokenizer.bos_token_id
        self.vocab_size: int = len(tokenizer)

    def encode_plain(self, text: str) -> list[int]:
        """Template text: special-token strings in it become special tokens."""
        with self._lock:
            return list(self._tokenizer.encode(text, add_special_tokens=False))

    def encode_content(self, text: str) -> list[int]:
        """User-supplied text: a literal '<end_of_turn>' stays text, so a message cannot forge
        a turn boundary."""
        with self._lock:
            encoded = self._tokenizer(text, add_special_tokens=False, split_special_tokens=True)
            return list(encoded["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        with self._lock:
            return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def render_chat_template(self, messages: list[dict[str, str]]) -> str | None:
        """The tokenizer's own chat template applied as text, with an open assistant turn at
        the end; None when the tokenizer ships no template."""
        with self._lock:
            if not getattr(self._tokenizer, "chat_template", None):
                return None
            try:
                rendered = self._tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            except Exception:  # a template refusing the conversation (jinja raise_exception)
                return None
        return rendered if isinstance(rendered, str) else None

    def token_id(self, token: str) -> int | None:
        """The id of a single special token, or None when the vocabulary lacks it."""
        with self._lock:
            token_id = self._tokenizer.convert_tokens_to_ids(token)
            unknown = self._tokenizer.unk_token_id
        if not isinstance(token_id, int) or token_id == unknown:
            return None
        return token_id


def encode_prompt(
    tokenizer: TokenizerAdapter,
    messages: Sequence[ChatMessage],
    prompting: Prompting | None = None,
) -> list[int]:
    """Token ids of a conversation in the model's frame, ending where the reply starts: the
    completion frame for a base model; for a chat model its tokenizer's chat template, else
    Gemma's turn format. Message content never becomes special tokens."""
    if prompting is not None and prompting.prompt_format == "completion":
        return _encode_segments(tokenizer, completion_frame(messages), add_bos=True)
    rendered = tokenizer.render_chat_template(template_messages(messages))
    segments = None if rendered is None else split_rendered_template(rendered, messages)
    if segments is not None:
        # Templates write the BOS token themselves (Gemma's does: "{{ bos_token }}").
        return _encode_segments(tokenizer, segments, add_bos=False)
    return encode_gemma_turns(tokenizer, messages)


def _encode_segments(
    tokenizer: TokenizerAdapter, segments: Sequence[Segment], add_bos: bool
) -> list[int]:
    ids: list[int] = []
    if add_bos and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
    for segment in segments:
        if segment.is_content:
            ids += tokenizer.encode_content(segment.text)
        else:
            ids += tokenizer.encode_plain(segment.text)
    return ids


def encode_gemma_turns(tokenizer: TokenizerAdapter, messages: Sequence[ChatMessage]) -> list[int]:
    """Token ids of a conversation in Gemma's turn format, ending with an open model turn:

        <bos><start_of_turn>user\\n{system}\\n\\n{text}<end_of_turn>\\n<start_of_turn>model\\n

    Gemma has no system role; like its official template, the system text opens the first
    user turn."""
    ids: list[int] = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    system_text: str | None = None
    for message in messages:
        if message.role == "system":
            system_text = message.content
            continue
        content = message.content
        if system_text is not None:
            content = f"{system_text}\n\n{content}"
            system_text = None
        ids += tokenizer.encode_plain(f"{START_OF_TURN}{_TEMPLATE_ROLE[message.role]}\n")
        ids += tokenizer.encode_content(content)
        ids += tokenizer.encode_plain(f"{END_OF_TURN}\n")
    ids += tokenizer.encode_plain(f"{START_OF_TURN}model\n")
    return ids


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decoding token by token would split characters made of several byte tokens and drop
    SentencePiece's leading spaces, so each step decodes a short window of recent tokens twice
    (with and without the new ones) and emits the difference once it no longer ends in an
    incomplete character (U+FFFD)."""

    def __init__(self, tokenizer: TokenizerAdapter) -> None:
        self._tokenizer = tokenizer
        self._token_ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        self._token_ids.append(token_id)
        prefix_text, new_text = self._decode_window()
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT_CHARACTER):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._token_ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        prefix_text, new_text = self._decode_window()
        self._prefix_offset = self._read_offset = len(self._token_ids)
        return new_text[len(prefix_text) :]

    def _decode_window(self) -> tuple[str, str]:
        """Text of the settled window, and of the window plus the tokens not yet emitted."""
        window = self._token_ids[self._prefix_offset :]
        settled = self._read_offset - self._prefix_offset
        return self._tokenizer.decode(window[:settled]), self._tokenizer.decode(window)


class StopStringMatcher:
    """Finds the first stop string in streamed text. Text that could be the start of a stop
    string is held back until it is known not to be one, so a stop string never leaks out."""

    def __init__(self, stop_strings: Sequence[str]) -> None:
        self._stop_strings = tuple(stop_strings)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was reached)."""
        if not self._stop_strings:
            return text, False
        self._pending += text
        first_stop = -1
        for stop in self._stop_strings:
            index = self._pending.find(stop)
            if index != -1 and (first_stop == -1 or index < first_stop):
                first_stop = index
        if first_stop != -1:
            emitted = self._pending[:first_stop]
            self._pending = ""
            return emitted, True
        held = self._longest_partial_match()
        cut = len(self._pending) - held
        emitted, self._pending = self._pending[:cut], self._pending[cut:]
        return emitted, False

    def flush(self) -> str:
        emitted, self._pending = self._pending, ""
        return emitted

    def _longest_partial_match(self) -> int:
        longest = 0
        for stop in self._stop_strings:
            for length in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:length]):
                    longest = length
                    break
        return longest
