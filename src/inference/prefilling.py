"""Planning the prefills of admitted prompts: which prompts go through the model together
(`plan_prefills`: left-padded groups, each prompt with the cached prefix it starts with, if
any), and how much of each pending prefill runs in one scheduler step (`chunk_plan`: a budget
of padded tokens per step, shortest remaining work first, so a prompt admitted behind a long
one gets its first token without waiting for all of it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inference.batching import PendingPrefill, start_prefill
from inference.loading import LoadedModel
from inference.prefix_cache import PrefixCache, PrefixEntry
from inference.slots import Row, Slot

Member = tuple[Slot, tuple[PrefixEntry, int] | None]
"""An admitted request and the cached prefix its prompt starts with (entry, tokens), if any."""

# Prompts admitted together are prefilled together while the group's padded work (rows x
# columns fed) stays under MAX_PREFILL_GROUP_TOKENS and each prompt adds at most
# FORWARD_COST_TOKENS more work than prefilling it alone would: what the forward it saves is
# worth (one read of the weights took about as long as computing ~30 prompt tokens here: a
# 1-row decode step ~70 ms, 200 prompt tokens ~600 ms, one thread). So short prompts share a
# forward, while one long prompt does not pad many short ones, nor does a prompt without a
# cached prefix make another recompute its prefix.
MAX_PREFILL_GROUP_TOKENS = 2048
FORWARD_COST_TOKENS = 32
# A chunk feeds at least this many columns of a prompt (fewer only at its end): smaller
# forwards would read the weights once per handful of tokens.
MIN_CHUNK_COLUMNS = 16


@dataclass(eq=False)
class Prefilling:
    """Admitted requests being prefilled together, and their decoding state."""

    rows: list[Row]
    prefill: PendingPrefill

    @classmethod
    def start(cls, loaded: LoadedModel, members: list[Member]) -> Prefilling:
        prompts = [slot.prompt_ids for slot, _ in members]
        prefixes = [None if match is None else (match[0].layers, match[1]) for _, match in members]
        prefill = start_prefill(loaded.runner, prompts, prefixes)
        for row, (slot, _) in enumerate(members):
            slot.reused_prompt_tokens = prefill.reused(row)
        return cls([Row(slot, loaded) for slot, _ in members], prefill)

    @property
    def wanted(self) -> bool:
        """False once every request of the group has finished (cancelled, timed out)."""
        return any(not row.slot.finished for row in self.rows)


def plan_prefills(slots: list[Slot], prefix_cache: PrefixCache) -> list[list[Member]]:
    """The groups of prompts prefilled together to admit `slots`, each prompt with the longest
    cached prefix it starts with (None when none)."""
    return _prefill_groups([(slot, prefix_cache.longest_match(slot.prompt_ids)) for slot in slots])


def chunk_plan(items: Sequence[Prefilling], budget_tokens: int) -> list[tuple[Prefilling, int]]:
    """(prefill, columns to feed) for this step: shortest remaining work first, rows x columns
    within `budget_tokens` (at least one chunk per step, so every prefill moves on)."""
    plan: list[tuple[Prefilling, int]] = []
    left = budget_tokens
    for item in sorted(items, key=lambda item: item.prefill.remaining * item.prefill.rows):
        remaining = item.prefill.remaining
        columns = min(remaining, max(left // item.prefill.rows, MIN_CHUNK_COLUMNS))
        if plan and columns * item.prefill.rows > left:
            break
        plan.append((item, columns))
        left -= columns * item.prefill.rows
        if left <= 0:
            break
    return plan


def _prefill_groups(members: list[Member]) -> list[list[Member]]:
    """Consecutive members grouped while each adds little work (see FORWARD_COST_TOKENS)."""
    groups: list[list[Member]] = []
    current: list[Member] = []
    for member in members:
        candidate = [*current, member]
        work = _group_work(candidate)
        added = work - (_group_work(current) if current else 0) - _group_work([member])
        if current and (work > MAX_PREFILL_GROUP_TOKENS or added > FORWARD_COST_TOKENS):
            groups.append(current)
            candidate = [member]
        current = candidate
    if current:
        groups.append(current)
    return groups


def _group_work(members: list[Member]) -> int:
    """Rows x columns fed to prefill `members` together (see `start_prefill`)."""
    length = max(len(slot.prompt_ids) for slot, _ in members)
    first_fed = min(
        length - len(slot.prompt_ids) + (0 if match is None else match[1])
        for slot, match in members
    )
    return len(members) * (length - first_fed)
