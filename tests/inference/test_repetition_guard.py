"""The repetition guard (repetition penalty, no-repeat n-grams) on fixed tensors and through
the engine, and a catalog entry's stop strings ending a stream, on the tiny model, greedy."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import torch

from inference import ChatMessage, Engine, InferenceSettings, load_catalog
from inference.prompting import Prompting
from inference.sampling import NO_TOKEN, apply_repetition_guard
from inference.text import IncrementalDetokenizer, encode_prompt
from tests.inference.helpers import collect, request

PLAIN = "plain"
GUARDED = "guarded"
PROMPT = "abc abc abc"
REPLY_TOKENS = 40


class TestGuardOnTensors:
    def test_penalty_touches_only_each_rows_own_reply_tokens(self) -> None:
        """Tokens a row already generated are divided (positive logits) or multiplied
        (negative) by the penalty; other tokens, padding and other rows' tokens stay."""
        logits = torch.tensor([[2.0, -2.0, 4.0, 1.0], [2.0, -2.0, 4.0, 1.0]])
        history = torch.tensor([[NO_TOKEN, 0, 1], [NO_TOKEN, NO_TOKEN, 2]])
        guarded = apply_repetition_guard(logits, history, Prompting(repetition_penalty=2.0))
        assert guarded.tolist() == [[1.0, -4.0, 4.0, 1.0], [2.0, -2.0, 2.0, 1.0]]

    def test_ngram_ban_blocks_the_token_that_repeats_a_sequence(self) -> None:
        """With n=3, after 'x y' the token that followed an earlier 'x y' is banned; a row
        whose last two tokens never occurred before keeps every token."""
        logits = torch.zeros(2, 6)
        history = torch.tensor([[1, 2, 3, 1, 2], [NO_TOKEN, 1, 2, 3, 4]])
        guarded = apply_repetition_guard(logits, history, Prompting(no_repeat_ngram_size=3))
        assert guarded[0, 3] == float("-inf")
        assert torch.isfinite(guarded[0, [0, 1, 2, 4, 5]]).all()
        assert torch.isfinite(guarded[1]).all()

    def test_off_guard_returns_the_logits_unchanged(self) -> None:
        """Without a guard the logits object comes back as it was."""
        logits = torch.randn(1, 5, generator=torch.Generator().manual_seed(0))
        assert apply_repetition_guard(logits, torch.tensor([[1, 1]]), Prompting()) is logits


def _entry(model_id: str, path: Path, extra: str) -> str:
    return f"""
[[models]]
id = "{model_id}"
source = {{ kind = "hf_dir", path = "{path}" }}
dtype = "float32"
device = "cpu"
context_limit_tokens = 512
max_new_tokens_cap = 200
price = {{ per_message_credits = 1, prompt_credits_per_1k_tokens = 1, \
completion_credits_per_1k_tokens = 1 }}
{extra}
"""


EngineWith = Callable[[str], Engine]


@pytest.fixture
async def engine_with(
    tiny_model_dir: Path, tmp_path: Path, no_catalog_env: None
) -> AsyncIterator[EngineWith]:
    """engine_with(extra_fields) -> an engine whose catalog has PLAIN (no prompting fields)
    and GUARDED (the tiny model with `extra_fields`)."""
    engines: list[Engine] = []

    def factory(extra: str) -> Engine:
        path = tmp_path / f"catalog-{len(engines)}.toml"
        text = _entry(PLAIN, tiny_model_dir, "") + _entry(GUARDED, tiny_model_dir, extra)
        path.write_text(text, encoding="utf-8")
        settings = InferenceSettings(cache_dir=tmp_path / "cache", max_batch_size=4)
        engine = Engine(load_catalog(path, environ={}), settings)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.close()


async def _reply_ids(engine: Engine, model_id: str, text: str = PROMPT) -> list[int]:
    """The greedy reply's token ids, checked against a plain full-sequence greedy loop that
    applies the model's guard (no cache, no batching): an independent reference."""
    reply, finished = await collect(engine.stream(request(model_id, text, REPLY_TOKENS)))
    loaded = engine.loaded_model(model_id)
    assert loaded is not None
    prompt_ids = encode_prompt(loaded.tokenizer, [ChatMessage("user", text)])
    reference = _reference_ids(loaded.model, prompt_ids, loaded.entry.prompting, loaded)
    assert finished.completion_tokens == len(reference)
    # The engine's text path (incremental detokenizer) over the reference ids: byte tokens of
    # the random model decode differently in one piece.
    detokenizer = IncrementalDetokenizer(loaded.tokenizer)
    shown = [t for t in reference if t not in loaded.stop_token_ids]
    assert reply == "".join(detokenizer.push(t) for t in shown) + detokenizer.flush()
    return reference


def _reference_ids(
    model: object, prompt_ids: list[int], prompting: Prompting, loaded: object
) -> list[int]:
    stop_ids = getattr(loaded, "stop_token_ids", frozenset())
    generated: list[int] = []
    with torch.inference_mode():
        while len(generated) < REPLY_TOKENS:
            ids = torch.tensor([prompt_ids + generated])  # [1, length]
            logits = model(input_ids=ids).logits[:, -1, :]  # type: ignore[operator]
            history = torch.tensor([generated], dtype=torch.long).reshape(1, len(generated))
            token = int(apply_repetition_guard(logits, history, prompting).argmax(dim=-1))
            generated.append(token)
            if token in stop_ids:
                break
    return generated


def _repeated_ngrams(ids: list[int], size: int) -> int:
    grams = [tuple(ids[i : i + size]) for i in range(len(ids) - size + 1)]
    return len(grams) - len(set(grams))


class TestGuardInTheEngine:
    async def test_ngram_guard_breaks_the_tiny_models_loop(self, engine_with: EngineWith) -> None:
        """The tiny model's greedy reply repeats itself; with no_repeat_ngram_size=3 the
        reply differs and holds no repeated 3-token sequence."""
        engine = engine_with("no_repeat_ngram_size = 3")
        plain = await _reply_ids(engine, PLAIN)
        guarded = await _reply_ids(engine, GUARDED)
        assert _repeated_ngrams(plain, 3) > 5, "the unguarded reply should loop"
        assert guarded != plain
        assert _repeated_ngrams(guarded, 3) == 0

    async def test_penalty_changes_the_greedy_reply(self, engine_with: EngineWith) -> None:
        """A repetition penalty of 2 changes the looping greedy reply."""
        engine = engine_with("repetition_penalty = 2.0")
        assert await _reply_ids(engine, GUARDED) != await _reply_ids(engine, PLAIN)

    async def test_guarded_rows_batched_equal_rows_alone(self, engine_with: EngineWith) -> None:
        """With the guard on, each request's greedy reply is the same whether it ran alone
        or batched with others of different lengths."""
        engine = engine_with("repetition_penalty = 1.5\nno_repeat_ngram_size = 2")
        prompts = ["abc", "hello there friend", "x y z x y z x y z"]
        alone = [await _reply_ids(engine, GUARDED, text) for text in prompts]
        together = await asyncio.gather(*(_reply_ids(engine, GUARDED, t) for t in prompts))
        assert list(together) == alone


class TestCatalogStopStrings:
    async def test_stop_string_ends_the_stream_with_stop(self, engine_with: EngineWith) -> None:
        """A catalog stop string that the greedy reply reaches ends it with finish reason
        'stop'; the text stops before it, and the tokens that formed it are counted."""
        # The guard keeps the random model from a reply of newlines only.
        guard = "no_repeat_ngram_size = 3"
        full_engine = engine_with(guard)
        full, _ = await collect(full_engine.stream(request(GUARDED, PROMPT, REPLY_TOKENS)))
        found = re.search(r"[^\W_]{3}", full)  # three letters or digits, after other text
        assert found is not None and found.start() > 0
        stop = found.group()
        engine = engine_with(f'{guard}\nstop_strings = ["{stop}"]')
        text, finished = await collect(engine.stream(request(GUARDED, PROMPT, REPLY_TOKENS)))
        assert finished.finish_reason == "stop"
        assert stop not in text
        assert full.startswith(text)
        loaded = engine.loaded_model(GUARDED)
        assert loaded is not None
        through_stop = full[: full.index(stop) + len(stop)]
        assert finished.completion_tokens >= len(loaded.tokenizer.encode_content(text))
        assert finished.completion_tokens <= len(loaded.tokenizer.encode_content(through_stop)) + 1


class TestDefaultReplyLength:
    async def test_a_request_without_a_limit_gets_the_models_default(
        self, engine_with: EngineWith
    ) -> None:
        """A request naming no max_new_tokens is held to the entry's default_max_new_tokens
        (not its cap), in the prepared request and in what is generated; one naming a limit
        keeps it."""
        engine = engine_with("default_max_new_tokens = 5")
        estimate = await engine.prepare(request(GUARDED, PROMPT, None))  # type: ignore[arg-type]
        assert estimate.max_completion_tokens == 5
        _, finished = await collect(engine.stream(request(GUARDED, PROMPT, None)))  # type: ignore[arg-type]
        assert finished.completion_tokens <= 5
        explicit = await engine.prepare(request(GUARDED, PROMPT, 50))
        assert explicit.max_completion_tokens == 50
