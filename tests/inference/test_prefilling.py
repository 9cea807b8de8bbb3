"""Prefill planning as pure functions: which admitted prompts are prefilled together (cached
prefixes included) and how many columns of each pending prefill one scheduler step feeds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference.prefilling import MAX_PREFILL_GROUP_TOKENS, MIN_CHUNK_COLUMNS, chunk_plan
from inference.prefilling import _prefill_groups as prefill_groups
from inference.prefix_cache import PrefixEntry
from inference.requests import SamplingParams
from inference.slots import Slot


def slot(length: int) -> Slot:
    return Slot(
        request_id=f"r{length}",
        prompt_ids=list(range(length)),
        max_new_tokens=4,
        sampling=SamplingParams(temperature=0.0, max_new_tokens=4),
        submitted_at=0.0,
        deadline_at=1e9,
        deliver=lambda event: None,
        model_id_answered="m",
    )


def cached(tokens: int) -> tuple[PrefixEntry, int]:
    return PrefixEntry(token_ids=tuple(range(tokens)), layers=(), size_bytes=0), tokens


@dataclass
class FakePending:
    """What chunk_plan reads of a pending prefill."""

    remaining: int
    rows: int


@dataclass
class FakeItem:
    prefill: Any


class TestGroups:
    def test_prompts_with_cached_prefixes_go_together(self) -> None:
        """Eight repeated prompts, each with its prefix cached, are one group (one forward)."""
        members = [(slot(25 + index), cached(24 + index)) for index in range(8)]
        assert [len(group) for group in prefill_groups(members)] == [8]

    def test_a_cached_prompt_is_not_recomputed_for_an_uncached_one(self) -> None:
        """A prompt whose 300 first tokens are cached does not join a new 300-token prompt:
        together they would feed 2 x 300 columns instead of 1 + 300."""
        members = [(slot(301), cached(300)), (slot(300), None)]
        assert [len(group) for group in prefill_groups(members)] == [1, 1]

    def test_short_prompts_of_different_lengths_share_a_forward(self) -> None:
        """Eight new prompts of 20 to 34 tokens: the padding costs less than seven forwards."""
        members = [(slot(20 + 2 * index), None) for index in range(8)]
        assert [len(group) for group in prefill_groups(members)] == [8]

    def test_one_long_prompt_does_not_pad_short_ones(self) -> None:
        """A 400-token prompt after two short ones starts a group of its own."""
        members = [(slot(20), None), (slot(24), None), (slot(400), None)]
        assert [len(group) for group in prefill_groups(members)] == [2, 1]

    def test_padded_work_is_bounded(self) -> None:
        """Uncached prompts group while rows x longest stays within the limit."""
        length = MAX_PREFILL_GROUP_TOKENS // 4
        members = [(slot(length), None) for _ in range(6)]
        assert [len(group) for group in prefill_groups(members)] == [4, 2]


class TestChunkPlan:
    def test_shortest_work_first_within_the_budget(self) -> None:
        """A short prompt admitted behind a long one is fed first, whole; the long one gets
        what is left of the budget."""
        long, short = FakeItem(FakePending(1000, 1)), FakeItem(FakePending(20, 1))
        plan = chunk_plan([long, short], 256)
        assert plan == [(short, 20), (long, 236)]

    def test_every_step_moves_one_prefill_at_least(self) -> None:
        """A group wider than the budget still feeds its minimum chunk."""
        wide = FakeItem(FakePending(100, 64))
        assert chunk_plan([wide], 256) == [(wide, MIN_CHUNK_COLUMNS)]
