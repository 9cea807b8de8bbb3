"""Reuse of a conversation's earlier turns: the next turn prefills only its new tokens and
answers exactly as it would without the cache."""

from __future__ import annotations

import torch

from inference import ChatMessage, GenerationRequest, SamplingParams
from inference.prefix_cache import MIN_REUSED_TOKENS, PrefixCache
from inference.text import encode_prompt
from tests.inference.conftest import TINY, EngineFactory
from tests.inference.helpers import collect, expected_text, reference_greedy_ids

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)
FIRST_TURN = (ChatMessage("user", "tell me about the sea and its tides"),)


def second_turn(first_answer: str) -> GenerationRequest:
    return GenerationRequest(
        TINY,
        (*FIRST_TURN, ChatMessage("assistant", first_answer), ChatMessage("user", "and then?")),
        GREEDY,
    )


class TestPrefixReuse:
    async def test_next_turn_reuses_and_answers_the_same(self, make_engine: EngineFactory) -> None:
        """The second turn reuses at least the first turn's prompt from the cache, and its
        answer equals plain generate's on the full prompt."""
        engine = make_engine()
        first_text, first = await collect(
            engine.stream(GenerationRequest(TINY, FIRST_TURN, GREEDY))
        )
        assert first.cached_prompt_tokens == 0
        follow_up = second_turn(first_text)
        text, finished = await collect(engine.stream(follow_up))
        assert finished.cached_prompt_tokens >= first.prompt_tokens
        assert finished.cached_prompt_tokens < finished.prompt_tokens
        reference = reference_greedy_ids(engine, follow_up)
        assert finished.completion_tokens == len(reference)
        assert text == expected_text(engine, TINY, reference)

    async def test_disabled_cache_recomputes(self, make_engine: EngineFactory) -> None:
        """With prefix_cache_bytes 0 nothing is reused and the answer is the same."""
        cached_engine, plain_engine = make_engine(), make_engine(prefix_cache_bytes=0)
        results = []
        for engine in (cached_engine, plain_engine):
            first_text, _ = await collect(
                engine.stream(GenerationRequest(TINY, FIRST_TURN, GREEDY))
            )
            results.append(await collect(engine.stream(second_turn(first_text))))
        (cached_text, cached), (plain_text, plain) = results
        assert plain.cached_prompt_tokens == 0 < cached.cached_prompt_tokens
        assert cached_text == plain_text
        assert cached.completion_tokens == plain.completion_tokens
        assert cached.prompt_tokens == plain.prompt_tokens


class TestPrefixCacheBounds:
    def _layers(self, tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(1, 1, tokens, 4), torch.zeros(1, 1, tokens, 4))]

    def test_evicts_oldest_beyond_byte_limit(self) -> None:
        """Entries beyond the byte budget evict the least recently used ones."""
        entry_bytes = 2 * 4 * MIN_REUSED_TOKENS * 4  # keys + values, float32
        cache = PrefixCache(max_bytes=2 * entry_bytes)
        for start in (100, 200, 300):
            cache.store(
                list(range(start, start + MIN_REUSED_TOKENS)), self._layers(MIN_REUSED_TOKENS)
            )
        assert len(cache) == 2 and cache.size_bytes == 2 * entry_bytes
        assert cache.longest_match(list(range(100, 100 + MIN_REUSED_TOKENS + 1))) is None
        assert cache.longest_match(list(range(300, 300 + MIN_REUSED_TOKENS + 1))) is not None

    def test_match_rules(self) -> None:
        """A match needs MIN_REUSED_TOKENS and always leaves a prompt token to prefill."""
        cache = PrefixCache(max_bytes=2**20)
        tokens = list(range(40))
        cache.store(tokens, self._layers(40))
        found = cache.longest_match(tokens)
        assert found is not None and found[1] == 39
        assert cache.longest_match([*tokens[: MIN_REUSED_TOKENS - 1], 999, 1000]) is None
        short = list(range(MIN_REUSED_TOKENS - 1))
        cache.store(short, self._layers(len(short)))
        assert len(cache) == 1, "prefixes shorter than the minimum are not kept"


def test_prompt_tokens_match_template(make_engine: EngineFactory) -> None:
    """The first turn's prompt is a prefix of the second turn's prompt (what makes reuse
    possible with Gemma's template)."""
    from inference.text import TokenizerAdapter
    from tests.inference.tiny_model import build_tokenizer

    tokenizer = TokenizerAdapter(build_tokenizer())
    first = encode_prompt(tokenizer, FIRST_TURN)
    second = encode_prompt(tokenizer, second_turn("an answer").messages)
    template_tail = len(tokenizer.encode_plain("<start_of_turn>model\n"))
    assert second[: len(first) - template_tail] == first[:-template_tail]
