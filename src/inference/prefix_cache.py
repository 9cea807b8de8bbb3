"""Reusing the KV cache of a conversation's earlier turns (prefix cache).

When a request finishes, the keys and values of the tokens it fed through the model (its
prompt and its answer) are kept, keyed by those token ids, in a per-model LRU bounded by
bytes. A later prompt that starts with the same tokens (the next turn of that conversation)
reuses them and only its new tail is prefilled."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

# Shorter matches are not worth a separate prefill: the template alone is ~10 tokens.
MIN_REUSED_TOKENS = 16
# Entries compared per lookup; the LRU keeps the likeliest (recent) ones first.
MAX_ENTRIES = 256


@dataclass(frozen=True)
class PrefixEntry:
    token_ids: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer [1, heads, tokens, dim]
    size_bytes: int


class PrefixCache:
    """Owned by one scheduler thread; not thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], PrefixEntry] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def store(self, token_ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if self._max_bytes <= 0 or len(token_ids) < MIN_REUSED_TOKENS:
            return
        assert all(k.shape[2] == len(token_ids) == v.shape[2] for k, v in layers)
        size = sum(k.nelement() * k.element_size() * 2 for k, _ in layers)
        if size > self._max_bytes:
            return
        key = tuple(token_ids)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        # Clones, so the entry does not keep the whole batch's tensors alive.
        copied = tuple((k.clone(), v.clone()) for k, v in layers)
        self._entries[key] = PrefixEntry(key, copied, size)
        self._bytes += size
        while self._bytes > self._max_bytes or len(self._entries) > MAX_ENTRIES:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size_bytes

    def longest_match(self, prompt_ids: list[int]) -> tuple[PrefixEntry, int] | None:
        """The entry sharing the longest prefix with the prompt, and that length; at least
        one prompt token is always left to prefill (its logits give the first answer token)."""
        best: tuple[PrefixEntry, int] | None = None
        limit = len(prompt_ids) - 1
        for entry in reversed(self._entries.values()):
            length = _common_prefix_length(entry.token_ids, prompt_ids, limit)
            if length >= MIN_REUSED_TOKENS and (best is None or length > best[1]):
                best = (entry, length)
        if best is not None:
            self._entries.move_to_end(best[0].token_ids)
        return best


def _common_prefix_length(cached: tuple[int, ...], prompt: list[int], limit: int) -> int:
    length = 0
    for a, b in zip(cached, prompt[:limit], strict=False):
        if a != b:
            break
        length += 1
    return length
