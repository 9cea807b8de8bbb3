"""The batch phases on the tiny model: grouped left-padded prefill, joining a running batch,
decoding, and rows leaving must give every row its own single-request logits (to float
tolerance) and hence its own greedy tokens."""

from __future__ import annotations

import pytest
import torch

from inference import Catalog, InferenceSettings
from inference.batching import (
    RunningBatch,
    decode_step,
    join,
    keep_rows,
    prefill,
    prefill_after_prefix,
    row_layers,
    set_next_tokens,
)
from inference.loading import LoadedModel, load_model
from tests.inference.conftest import TINY

# Lengths straddle the tiny model's sliding window (8) so padding meets the window mask.
PROMPTS = [
    [2, 40, 41, 42],
    [2, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61],
    [2, 70, 71, 72, 73, 74, 75, 76, 77],
    [2, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97],
]
STEPS = 12
LOGIT_TOLERANCE = 1e-4


@pytest.fixture
def tiny_loaded(tiny_catalog: Catalog, tiny_settings: InferenceSettings) -> LoadedModel:
    return load_model(tiny_catalog.get(TINY), tiny_settings)


class Alone:
    """One prompt decoded greedily by transformers generate: tokens and per-step logits."""

    def __init__(self, loaded: LoadedModel, prompt: list[int], steps: int) -> None:
        with torch.inference_mode():
            output = loaded.model.generate(
                torch.tensor([prompt]),
                max_new_tokens=steps,
                min_new_tokens=steps,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
        self.tokens: list[int] = output.sequences[0, len(prompt) :].tolist()
        self.logits = [step[0] for step in output.logits]  # steps x [vocab]


class Recorder:
    """Tokens and logits a row received in the batch."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.logits: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor) -> int:
        self.logits.append(logits)
        self.tokens.append(int(logits.argmax()))
        return self.tokens[-1]

    def check_against(self, alone: Alone) -> None:
        count = len(self.tokens)
        assert self.tokens == alone.tokens[:count]
        for mine, theirs in zip(self.logits, alone.logits[:count], strict=True):
            assert torch.allclose(mine, theirs, atol=LOGIT_TOLERANCE), (mine - theirs).abs().max()


def start(loaded: LoadedModel, prompts: list[list[int]], rows: list[Recorder]) -> RunningBatch:
    batch, logits = prefill(loaded.model, prompts, loaded.device)
    set_next_tokens(batch, [row.add(logits[index]) for index, row in enumerate(rows)])
    return batch


def step(loaded: LoadedModel, batch: RunningBatch, rows: list[Recorder]) -> None:
    logits = decode_step(loaded.model, batch)
    set_next_tokens(batch, [row.add(logits[index]) for index, row in enumerate(rows)])


class TestBatchPhases:
    def test_grouped_prefill_matches_alone(self, tiny_loaded: LoadedModel) -> None:
        """Prompts of different lengths prefilled and decoded together (left-padded) get the
        logits and tokens each gets alone."""
        rows = [Recorder() for _ in PROMPTS]
        with torch.inference_mode():
            batch = start(tiny_loaded, PROMPTS, rows)
            for _ in range(STEPS - 1):
                step(tiny_loaded, batch, rows)
        for row, prompt in zip(rows, PROMPTS, strict=True):
            row.check_against(Alone(tiny_loaded, prompt, STEPS))

    def test_join_and_leave_mid_run(self, tiny_loaded: LoadedModel) -> None:
        """A longer prompt joining a batch that is already decoding, and a row leaving
        (padding-only columns trimmed), leave every row's logits as they are alone."""
        short, medium, _, long = (Recorder() for _ in PROMPTS)
        with torch.inference_mode():
            batch = start(tiny_loaded, PROMPTS[:2], [short, medium])
            for _ in range(3):
                step(tiny_loaded, batch, [short, medium])
            batch = join(batch, start(tiny_loaded, PROMPTS[3:], [long]))
            for _ in range(4):
                step(tiny_loaded, batch, [short, medium, long])
            width_before = batch.cache_length
            remaining = keep_rows(batch, [1, 2])  # the short row leaves
            assert remaining is not None and remaining.cache_length <= width_before
            for _ in range(STEPS):
                step(tiny_loaded, remaining, [medium, long])
        short.check_against(Alone(tiny_loaded, PROMPTS[0], len(short.tokens)))
        medium.check_against(Alone(tiny_loaded, PROMPTS[1], len(medium.tokens)))
        long.check_against(Alone(tiny_loaded, PROMPTS[3], len(long.tokens)))


class TestPrefixPhases:
    def test_prefill_after_prefix_matches_full_prefill(self, tiny_loaded: LoadedModel) -> None:
        """Reusing a row's cached keys and values for the first tokens of a prompt gives the
        same logits, then and in later decode steps, as prefilling the whole prompt."""
        shorter, prompt = PROMPTS[0], PROMPTS[3]
        reused = 10
        with torch.inference_mode():
            # The source row is padded in its batch: row_layers must strip that padding.
            source, _ = prefill(tiny_loaded.model, [shorter, prompt], tiny_loaded.device)
            layers = row_layers(source, 1)
            assert layers[0][0].shape[2] == len(prompt)
            assert row_layers(source, 0)[0][0].shape[2] == len(shorter)
            full_rows, partial_rows = [Recorder()], [Recorder()]
            full = start(tiny_loaded, [prompt], full_rows)
            partial, logits = prefill_after_prefix(
                tiny_loaded.model, tuple(layers), reused, prompt, tiny_loaded.device
            )
            set_next_tokens(partial, [partial_rows[0].add(logits[0])])
            for _ in range(STEPS):
                step(tiny_loaded, full, full_rows)
                step(tiny_loaded, partial, partial_rows)
        assert partial_rows[0].tokens == full_rows[0].tokens
        for mine, theirs in zip(partial_rows[0].logits, full_rows[0].logits, strict=True):
            assert torch.allclose(mine, theirs, atol=LOGIT_TOLERANCE)
