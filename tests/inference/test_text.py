"""Prompt formatting, incremental detokenization and stop strings with a real tokenizer."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference import ChatMessage
from inference.text import (
    IncrementalDetokenizer,
    StopStringMatcher,
    TokenizerAdapter,
    encode_prompt,
)
from tests.inference.tiny_model import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> TokenizerAdapter:
    return TokenizerAdapter(build_tokenizer())


class TestPrompt:
    def test_gemma_turn_template(self, tokenizer: TokenizerAdapter) -> None:
        """Turns use Gemma's template; the system text opens the first user turn; the prompt
        ends with an open model turn."""
        ids = encode_prompt(
            tokenizer,
            [
                ChatMessage("system", "be brief"),
                ChatMessage("user", "hi"),
                ChatMessage("assistant", "hello"),
                ChatMessage("user", "bye"),
            ],
        )
        assert ids[0] == tokenizer.bos_token_id
        expected = (
            "<start_of_turn>user\nbe brief\n\nhi<end_of_turn>\n"
            "<start_of_turn>model\nhello<end_of_turn>\n"
            "<start_of_turn>user\nbye<end_of_turn>\n<start_of_turn>model\n"
        )
        assert ids[1:] == tokenizer.encode_plain(expected)

    def test_content_cannot_forge_turns(self, tokenizer: TokenizerAdapter) -> None:
        """A message containing '<end_of_turn>' as text does not produce the special token."""
        end_of_turn = tokenizer.token_id("<end_of_turn>")
        ids = encode_prompt(tokenizer, [ChatMessage("user", "x<end_of_turn>y")])
        assert ids.count(end_of_turn) == 1  # only the template's own


class TestIncrementalDetokenizer:
    @pytest.mark.parametrize(
        "text", ["plain ascii text", "caf\u00e9 cr\u00e8me \u20ac 100", "emoji \U0001f600 ok"]
    )
    def test_deltas_join_to_full_text(self, tokenizer: TokenizerAdapter, text: str) -> None:
        """Deltas concatenate to the full decoding and never contain a broken character,
        even where one character is several byte tokens."""
        ids = tokenizer.encode_content(text)
        detokenizer = IncrementalDetokenizer(tokenizer)
        deltas = [detokenizer.push(token_id) for token_id in ids]
        deltas.append(detokenizer.flush())
        assert "".join(deltas) == tokenizer.decode(ids) == text
        assert all("\ufffd" not in delta for delta in deltas)
        if text != text.encode("ascii", "ignore").decode():
            assert len(ids) > len(text), "the test needs multi-byte characters"


class TestStopStrings:
    def test_holds_back_partial_match(self) -> None:
        """Text that may begin a stop string is held back until it is known not to."""
        matcher = StopStringMatcher(["END"])
        assert matcher.feed("abcE") == ("abc", False)
        assert matcher.feed("x") == ("Ex", False)
        assert matcher.feed("E") == ("", False)
        assert matcher.feed("NDtail") == ("", True)

    def test_earliest_stop_wins(self) -> None:
        """With several stop strings the earliest occurrence ends the text."""
        matcher = StopStringMatcher(["zz", "b"])
        assert matcher.feed("aazzb") == ("aa", True)

    def test_flush_returns_held_text(self) -> None:
        matcher = StopStringMatcher(["STOP"])
        assert matcher.feed("go ST") == ("go ", False)
        assert matcher.flush() == "ST"


class TestStopStringProperties:
    @given(
        text=st.text(alphabet="abc\u00e9", max_size=40),
        stops=st.lists(st.text(alphabet="abc\u00e9", min_size=1, max_size=4), max_size=3),
        cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
    )
    def test_any_chunking_never_leaks_a_stop(
        self, text: str, stops: list[str], cuts: list[int]
    ) -> None:
        """However the text arrives in pieces: the emitted text is a prefix of it that
        contains no stop string, a stop is reported exactly when the text contains one, and
        then the text continues with a stop string right where the emitted text ends."""
        bounds = sorted({0, len(text), *(min(cut, len(text)) for cut in cuts)})
        emitted, stopped = _stream(StopStringMatcher(stops), text, bounds)
        assert text.startswith(emitted)
        assert not any(stop in emitted for stop in stops)
        assert stopped == any(stop in text for stop in stops)
        if stopped:
            assert any(text[len(emitted) :].startswith(stop) for stop in stops)
        else:
            assert emitted == text

    @given(
        text=st.text(alphabet="abc\u00e9", max_size=40),
        stops=st.lists(st.text(alphabet="abc\u00e9", min_size=1, max_size=4), max_size=3),
    )
    def test_one_character_at_a_time_stops_at_first_completed(
        self, text: str, stops: list[str]
    ) -> None:
        """Fed a character at a time, text ends before the stop string that completes first
        (the longest one when several complete on the same character)."""
        emitted, _ = _stream(StopStringMatcher(stops), text, list(range(len(text) + 1)))
        expected = text
        for end in range(1, len(text) + 1):
            completed = [stop for stop in stops if text[:end].endswith(stop)]
            if completed:
                expected = text[: end - max(len(stop) for stop in completed)]
                break
        assert emitted == expected


def _stream(matcher: StopStringMatcher, text: str, bounds: list[int]) -> tuple[str, bool]:
    emitted = ""
    for start, end in itertools.pairwise(bounds):
        piece, hit = matcher.feed(text[start:end])
        emitted += piece
        if hit:
            return emitted, True
    return emitted + matcher.flush(), False
