"""The batch phases on the tiny model: grouped left-padded prefill (whole or in chunks),
joining a running batch, decoding, rows leaving and the cache growing must give every row its
own single-request logits (to float tolerance) and hence its own greedy tokens."""

from __future__ import annotations

import pytest
import torch

from inference import Catalog, InferenceSettings
from inference.batching import (
    RunningBatch,
    decode_step,
    finish_prefill,
    join,
    keep_rows,
    prefill,
    prefill_chunk,
    row_layers,
    set_next_tokens,
    start_prefill,
)
from inference.kv_cache import COLUMN_BLOCK
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
ROWS = 4  # the running batch's row capacity in these tests


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


def start(
    loaded: LoadedModel,
    prompts: list[list[int]],
    rows: list[Recorder],
    chunk_columns: int | None = None,
) -> RunningBatch:
    """Prompts prefilled together (in chunks of `chunk_columns`), as a running batch."""
    incoming, logits = prefill(loaded.runner, prompts, chunk_columns)
    set_next_tokens(incoming, [row.add(logits[index]) for index, row in enumerate(rows)])
    return join(None, incoming, ROWS)


def step(loaded: LoadedModel, batch: RunningBatch, rows: list[Recorder]) -> None:
    logits = decode_step(loaded.runner, batch)
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
            incoming, logits = prefill(tiny_loaded.runner, PROMPTS[3:])
            set_next_tokens(incoming, [long.add(logits[0])])
            batch = join(batch, incoming, ROWS)
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

    def test_chunked_prefill_matches_alone(self, tiny_loaded: LoadedModel) -> None:
        """Prompts fed 3 columns per forward (chunks straddle the padding and the sliding
        window of 8) give the logits and tokens each gets alone."""
        rows = [Recorder() for _ in PROMPTS]
        with torch.inference_mode():
            batch = start(tiny_loaded, PROMPTS, rows, chunk_columns=3)
            for _ in range(STEPS - 1):
                step(tiny_loaded, batch, rows)
        for row, prompt in zip(rows, PROMPTS, strict=True):
            row.check_against(Alone(tiny_loaded, prompt, STEPS))

    def test_cache_growth_and_a_short_row_joining_a_long_one(
        self, tiny_loaded: LoadedModel
    ) -> None:
        """A row whose prompt fills the first allocation makes the cache grow while decoding;
        a short prompt joining it gets a long left padding. Both keep their own logits."""
        long_prompt = [2] + [40 + index % 50 for index in range(COLUMN_BLOCK - 3)]
        long, short = Recorder(), Recorder()
        with torch.inference_mode():
            batch = start(tiny_loaded, [long_prompt], [long])
            incoming, logits = prefill(tiny_loaded.runner, PROMPTS[:1])
            set_next_tokens(incoming, [short.add(logits[0])])
            batch = join(batch, incoming, ROWS)
            for _ in range(STEPS):
                step(tiny_loaded, batch, [long, short])
            assert batch.cache.column_capacity > COLUMN_BLOCK  # it grew
        long.check_against(Alone(tiny_loaded, long_prompt, len(long.tokens)))
        short.check_against(Alone(tiny_loaded, PROMPTS[0], len(short.tokens)))


class TestPrefixPhases:
    def test_prefill_after_prefix_matches_full_prefill(self, tiny_loaded: LoadedModel) -> None:
        """Reusing a row's cached keys and values for the first tokens of a prompt gives the
        same logits, then and in later decode steps, as prefilling the whole prompt."""
        shorter, prompt = PROMPTS[0], PROMPTS[3]
        reused = 10
        with torch.inference_mode():
            # The source row is padded in its batch: row_layers must strip that padding.
            source, _ = prefill(tiny_loaded.runner, [shorter, prompt])
            layers = row_layers(source, 1)
            assert layers[0][0].shape[2] == len(prompt)
            assert row_layers(source, 0)[0][0].shape[2] == len(shorter)
            full_rows, partial_rows = [Recorder()], [Recorder()]
            full = start(tiny_loaded, [prompt], full_rows)
            pending = start_prefill(tiny_loaded.runner, [prompt], [(tuple(layers), reused)])
            prefill_chunk(tiny_loaded.runner, pending, len(prompt))
            assert pending.logits is not None
            partial = finish_prefill(pending)
            set_next_tokens(partial, [partial_rows[0].add(pending.logits[0])])
            for _ in range(STEPS):
                step(tiny_loaded, full, full_rows)
                step(tiny_loaded, partial, partial_rows)
        assert partial_rows[0].tokens == full_rows[0].tokens
        for mine, theirs in zip(partial_rows[0].logits, full_rows[0].logits, strict=True):
            assert torch.allclose(mine, theirs, atol=LOGIT_TOLERANCE)

    def test_prefixed_and_plain_prompts_prefilled_together(self, tiny_loaded: LoadedModel) -> None:
        """A prompt after its cached prefix and a prompt without one, in one left-padded
        group: the first is fed only from where the second needs columns, and both get the
        logits they get alone."""
        plain, prefixed = PROMPTS[2], PROMPTS[3]
        reused = 14  # the prefixed row's tail is shorter than the plain prompt
        rows = [Recorder(), Recorder()]
        with torch.inference_mode():
            source, _ = prefill(tiny_loaded.runner, [prefixed])
            layers = tuple(row_layers(source, 0))
            pending = start_prefill(tiny_loaded.runner, [plain, prefixed], [None, (layers, reused)])
            assert pending.reused(0) == 0
            assert pending.reused(1) == len(prefixed) - len(plain) < reused
            prefill_chunk(tiny_loaded.runner, pending, 4)
            while pending.logits is None:
                prefill_chunk(tiny_loaded.runner, pending, 4)
            incoming = finish_prefill(pending)
            set_next_tokens(incoming, [row.add(pending.logits[i]) for i, row in enumerate(rows)])
            batch = join(None, incoming, ROWS)
            for _ in range(STEPS - 1):
                step(tiny_loaded, batch, rows)
        rows[0].check_against(Alone(tiny_loaded, plain, STEPS))
        rows[1].check_against(Alone(tiny_loaded, prefixed, STEPS))
