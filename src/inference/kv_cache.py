"""The keys and values of a batch's rows in preallocated tensors (`KVCache`), the attention
masks a forward over them needs (`attention_masks`), and the adapter that lets a transformers
model read and write them (`cache_for_model`).

Layout: per layer one tensor [row_capacity, kv_heads, column_capacity, head_dim] for keys and
one for values, allocated once and grown by doubling, so a decode step writes one column in
place instead of concatenating every layer's cache. Rows are left-padded as `generate` pads a
batch: every row's next token goes into the same column (`length`), and a row's own tokens are
its columns `starts[row]` to `length`. Distances between a row's tokens, which the causal and
sliding-window masks use, are column distances, so a column-based mask serves every row. A
sliding-window layer is given only the columns its window can reach. Unused cells are zeros,
never garbage: a masked key still goes through the softmax's arithmetic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

# Columns are allocated in multiples of this, so a growing batch reallocates rarely.
COLUMN_BLOCK = 256


class KVCache:
    """Keys and values of up to `row_capacity` left-padded rows. Owned by one thread."""

    def __init__(
        self,
        layer_is_sliding: Sequence[bool],
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        row_capacity: int,
        columns: int,
        sliding_window: int | None,
    ) -> None:
        self.layer_is_sliding = tuple(layer_is_sliding)
        self.sliding_window = sliding_window
        self.rows = 0
        self.length = 0  # columns in use; the next token of every row goes into this one
        self.starts = torch.zeros(0, dtype=torch.long, device=device)  # [rows] first real column
        shape = (row_capacity, kv_heads, _round_up(max(columns, 1)), head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in layer_is_sliding]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in layer_is_sliding]

    @property
    def row_capacity(self) -> int:
        return int(self.keys[0].shape[0])

    @property
    def column_capacity(self) -> int:
        return int(self.keys[0].shape[2])

    def first_column(self, layer: int, column: int) -> int:
        """The first column a query at `column` can see in `layer` (its window's start)."""
        if self.layer_is_sliding[layer] and self.sliding_window is not None:
            return max(0, column - self.sliding_window + 1)
        return 0

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, column: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys and values [rows, kv_heads, new, head_dim] at `column`; the layer's
        keys and values a query of these columns may attend to, [rows, kv_heads, seen, dim]."""
        rows, new = keys.shape[0], keys.shape[2]
        end = column + new
        self.keys[layer][:rows, :, column:end] = keys
        self.values[layer][:rows, :, column:end] = values
        first = self.first_column(layer, column)
        return self.keys[layer][:rows, :, first:end], self.values[layer][:rows, :, first:end]

    def reserve(self, columns: int) -> None:
        """Make room for `columns` more columns after `length` (doubling the allocation)."""
        needed = self.length + columns
        if needed <= self.column_capacity:
            return
        capacity = _round_up(max(needed, 2 * self.column_capacity))
        self._reallocate(self.row_capacity, capacity)

    def append(self, other: KVCache) -> None:
        """Add `other`'s rows after this cache's, both ending at the same column: the shorter
        side moves right (its rows get more left padding)."""
        assert other.rows > 0 and self.rows + other.rows <= self.row_capacity
        length = max(self.length, other.length)
        if length > self.column_capacity:
            self._reallocate(self.row_capacity, _round_up(length))
        shift = length - self.length
        if shift and self.rows:
            for tensors in (self.keys, self.values):
                for tensor in tensors:
                    used = tensor[: self.rows, :, : self.length].clone()
                    tensor[: self.rows, :, shift:length] = used
                    tensor[: self.rows, :, :shift] = 0
        offset = length - other.length
        rows = slice(self.rows, self.rows + other.rows)
        for mine, theirs in zip(
            (*self.keys, *self.values), (*other.keys, *other.values), strict=True
        ):
            mine[rows, :, :offset] = 0
            mine[rows, :, offset:length] = theirs[: other.rows, :, : other.length]
        self.starts = torch.cat([self.starts + shift, other.starts + offset])
        self.rows += other.rows
        self.length = length

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order, moved to the front), then drop the leading columns
        that are padding in every remaining row, so attention stops reading them."""
        if not rows:
            self.rows, self.length = 0, 0
            self.starts = self.starts[:0]
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.starts.device)
        starts = self.starts.index_select(0, index)
        first = int(starts.min().item())
        for tensor in (*self.keys, *self.values):
            kept = tensor[: self.rows, :, first : self.length].index_select(0, index)
            tensor[: len(rows), :, : self.length - first] = kept
        self.starts = starts - first
        self.rows = len(rows)
        self.length -= first

    def row_layers(self, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One row's keys and values without its padding, per layer [1, kv_heads, real, dim]
        (views: copy them to keep them)."""
        start = int(self.starts[row].item())
        columns = slice(start, self.length)
        return [
            (keys[row : row + 1, :, columns], values[row : row + 1, :, columns])
            for keys, values in zip(self.keys, self.values, strict=True)
        ]

    def _reallocate(self, row_capacity: int, columns: int) -> None:
        for tensors in (self.keys, self.values):
            for index, tensor in enumerate(tensors):
                grown = tensor.new_zeros(row_capacity, tensor.shape[1], columns, tensor.shape[3])
                grown[: self.rows, :, : self.length] = tensor[: self.rows, :, : self.length]
                tensors[index] = grown


def attention_masks(
    cache: KVCache, column: int, new: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Boolean masks [rows, 1, new, seen] (True: attend) for `new` tokens per row written at
    `column`: the full-attention layers' mask and, when some layers slide, theirs (over the
    columns `KVCache.first_column` gives them). A query attends to its row's real tokens up to
    itself; a padding query attends to itself only, so no softmax row is empty."""
    device = cache.starts.device
    end = column + new
    keys = torch.arange(end, device=device)  # [seen]
    queries = torch.arange(column, end, device=device).unsqueeze(1)  # [new, 1]
    real = keys >= cache.starts[: cache.rows].unsqueeze(1)  # [rows, seen]
    allowed = (real.unsqueeze(1) & (keys <= queries)) | (keys == queries)  # [rows, new, seen]
    full = allowed.unsqueeze(1)  # [rows, 1, new, seen]
    if cache.sliding_window is None or not any(cache.layer_is_sliding):
        return full, None
    first = max(0, column - cache.sliding_window + 1)
    in_window = keys[first:] > queries - cache.sliding_window  # [new, seen - first]
    return full, full[..., first:] & in_window


class _SlabLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]  # untyped in transformers
    """One layer of a transformers `Cache` that writes into and reads from a `KVCache`."""

    is_sliding = False

    def __init__(self, cache: KVCache, layer: int, column: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # untyped in transformers
        self.cache, self.layer, self.column = cache, layer, column
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.write(self.layer, key_states, value_states, self.column)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        first = self.cache.first_column(self.layer, self.column)
        return self.column + query_length - first, first

    def get_seq_length(self) -> int:
        return self.column

    def get_max_length(self) -> int:
        return -1


def cache_for_model(cache: KVCache, column: int) -> Cache:
    """A transformers `Cache` over `cache` for one forward whose tokens go in at `column`."""
    layers: list[Any] = [_SlabLayer(cache, index, column) for index in range(len(cache.keys))]
    return Cache(layers=layers)


def _round_up(columns: int) -> int:
    return -(-columns // COLUMN_BLOCK) * COLUMN_BLOCK
