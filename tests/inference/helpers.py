"""Small helpers for driving the engine in tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from inference import (
    ChatMessage,
    Engine,
    Finished,
    GenerationRequest,
    SamplingParams,
    StreamEvent,
    TextDelta,
)
from inference.prompting import Prompting
from inference.sampling import apply_repetition_guard
from inference.text import encode_prompt


def request(
    model_id: str,
    text: str,
    max_new_tokens: int = 16,
    temperature: float = 0.0,
    **kwargs: object,
) -> GenerationRequest:
    sampling_fields = {k: kwargs.pop(k) for k in ("seed", "stop", "top_k", "top_p") if k in kwargs}
    return GenerationRequest(
        model_id=model_id,
        messages=(ChatMessage("user", text),),
        sampling=SamplingParams(
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            **sampling_fields,  # type: ignore[arg-type]
        ),
        **kwargs,  # type: ignore[arg-type]
    )


async def collect(events: AsyncIterator[StreamEvent]) -> tuple[str, Finished]:
    """All text of a stream and its final event; fails if the stream breaks its contract."""
    text = ""
    finished: Finished | None = None
    async for event in events:
        assert finished is None, "an event came after Finished"
        if isinstance(event, TextDelta):
            text += event.text
        else:
            finished = event
    assert finished is not None, "the stream ended without a Finished event"
    return text, finished


def reference_greedy_ids(
    engine: Engine, req: GenerationRequest, model: Any | None = None
) -> list[int]:
    """What plain transformers `generate` produces for the request, greedy, one at a time, in
    the model's prompt frame with its repetition guard, cut after the token that completes
    one of the model's stop strings (as the engine stops there). `model`: another copy of the
    weights to generate with (default: the engine's loaded model)."""
    loaded = engine.loaded_model(req.model_id)
    assert loaded is not None
    model = loaded.model if model is None else model
    prompting = loaded.entry.prompting
    prompt_ids = encode_prompt(loaded.tokenizer, req.messages, prompting)
    assert req.sampling.max_new_tokens is not None
    guard = _RepetitionGuard(prompting, len(prompt_ids))
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=req.sampling.max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(loaded.stop_token_ids),
            pad_token_id=0,
            logits_processor=LogitsProcessorList([guard]),
        )
    generated: list[int] = list(output[0, len(prompt_ids) :].tolist())
    stops = prompting.all_stop_strings()
    for end in range(1, len(generated) + 1):
        if any(stop in loaded.tokenizer.decode(generated[:end]) for stop in stops):
            return generated[:end]
    return generated


class _RepetitionGuard(LogitsProcessor):
    """The engine's repetition guard as a `generate` logits processor (reply tokens only)."""

    def __init__(self, prompting: Prompting, prompt_length: int) -> None:
        self._prompting = prompting
        self._prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        history = input_ids[:, self._prompt_length :]
        return apply_repetition_guard(scores, history, self._prompting)


def expected_text(engine: Engine, model_id: str, token_ids: list[int]) -> str:
    """The streamed text of these reply tokens: stop tokens dropped, cut at a stop string."""
    loaded = engine.loaded_model(model_id)
    assert loaded is not None
    text = loaded.tokenizer.decode([t for t in token_ids if t not in loaded.stop_token_ids])
    for stop in loaded.entry.prompting.all_stop_strings():
        text = text.split(stop, 1)[0]
    return text


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
