"""The running batch of one model and the phases that change it: `start_prefill` (newly
admitted prompts, together, left-padded) advanced chunk by chunk with `prefill_chunk` so a long
prompt never stalls the batch for long, `join` (their cache added to the running batch between
decode steps), `decode_step` (one token for every row) and `keep_rows` (finished rows leave).
The batch also keeps each row's reply tokens so far, for the repetition guard.

Keys and values live in a preallocated `KVCache` (see `kv_cache.py` for the layout); the
model runs through `BatchedModel`, which gives it per-row positions, masks built from each
row's first column, and a cache adapter that writes in place. Rows are left-padded as
`generate` pads a batch, so distances between a row's own tokens are unchanged."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from inference.kv_cache import KVCache, attention_masks, cache_for_model
from inference.sampling import NO_TOKEN

_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})


class UnsupportedModel(ValueError):
    """The model's attention is of a kind the batch phases cannot mask."""


class BatchedModel:
    """A transformers causal LM run over `KVCache`s. Reads the layer layout from the config."""

    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype) -> None:
        config = model.config.get_text_config()
        window = getattr(config, "sliding_window", None)
        declared = getattr(config, "layer_types", None)
        layer_types = list(declared) if declared is not None else (
            ["sliding_attention" if window else "full_attention"] * config.num_hidden_layers
        )  # fmt: skip
        unknown = set(layer_types) - _LAYER_TYPES
        if unknown:
            raise UnsupportedModel(f"attention layer types {sorted(unknown)} are not supported")
        self.model = model
        self.device = device
        self.dtype = dtype
        self.layer_is_sliding = [kind == "sliding_attention" for kind in layer_types]
        self.sliding_window: int | None = window if any(self.layer_is_sliding) else None
        self.kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        # Models with layer types take one mask per type; the others one 4-D mask.
        self._mask_per_type = declared is not None
        # transformers 5.x renamed the forward's `past_key_values` to `cache`.
        self._cache_argument = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )

    def new_cache(self, rows: int, columns: int) -> KVCache:
        return KVCache(
            self.layer_is_sliding,
            self.kv_heads,
            self.head_dim,
            self.dtype,
            self.device,
            rows,
            columns,
            self.sliding_window,
        )

    def forward(self, cache: KVCache, input_ids: torch.Tensor, column: int) -> torch.Tensor:
        """Feeds input_ids [rows, new] at `column` of every row (their keys and values are
        written there); returns the logits after each row's last fed token [rows, vocab]."""
        rows, new = input_ids.shape
        assert rows == cache.rows and column + new <= cache.column_capacity
        full, sliding = attention_masks(cache, column, new)
        offsets = torch.arange(column, column + new, device=self.device)  # [new]
        # A row's positions count its own tokens; padding gets a harmless 0.
        positions = (offsets - cache.starts[:rows].unsqueeze(1)).clamp(min=0)  # [rows, new]
        windowed = full if sliding is None else sliding
        mask: Any = windowed
        if self._mask_per_type:
            mask = {"full_attention": full, "sliding_attention": windowed}
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_argument: cache_for_model(cache, column)},
        )
        cache.length = max(cache.length, column + new)
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits


@dataclass
class RunningBatch:
    cache: KVCache
    next_token_ids: torch.Tensor  # [batch, 1], sampled but not yet fed to the model
    # [batch, steps]: each row's sampled reply tokens (next_token_ids included), left-padded
    # with NO_TOKEN.
    history: torch.Tensor

    @property
    def size(self) -> int:
        return self.cache.rows

    @property
    def cache_length(self) -> int:
        return self.cache.length


@dataclass
class PendingPrefill:
    """Prompts being prefilled together: their left-padded ids and the columns done so far.
    Becomes a `RunningBatch` (`finish_prefill`) once every column went through the model."""

    cache: KVCache
    input_ids: torch.Tensor  # [rows, columns], left-padded
    done: int  # columns already fed
    logits: torch.Tensor | None = None  # after the last column, [rows, vocab]

    @property
    def remaining(self) -> int:
        return int(self.input_ids.shape[1]) - self.done

    @property
    def rows(self) -> int:
        return self.cache.rows

    def reused(self, row: int) -> int:
        """Before feeding starts: prompt tokens of `row` taken from a prefix, not fed."""
        return max(0, self.done - int(self.cache.starts[row].item()))


Prefix = tuple[tuple[tuple[torch.Tensor, torch.Tensor], ...], int]
"""Known keys and values of a prompt's first tokens: (per layer [1, heads, >= n, dim], n)."""


def start_prefill(
    runner: BatchedModel, prompts: list[list[int]], prefixes: list[Prefix | None] | None = None
) -> PendingPrefill:
    """New prompts, left-padded to a common length, nothing fed yet. A prompt with a prefix
    has those columns copied in; feeding starts at the first column some row still needs, so
    a row whose prefix reaches further has a few known columns computed again."""
    length = max(len(prompt) for prompt in prompts)
    input_ids = torch.zeros(len(prompts), length, dtype=torch.long)  # [prompts, length]
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
    starts = [length - len(prompt) for prompt in prompts]
    cache = runner.new_cache(len(prompts), length)
    cache.rows = len(prompts)
    cache.starts = torch.tensor(starts, dtype=torch.long, device=runner.device)
    done = length
    for row, prefix in enumerate(prefixes or [None] * len(prompts)):
        start = starts[row]
        if prefix is None:
            done = min(done, start)
            continue
        layers, reused = prefix
        assert 0 < reused < len(prompts[row])
        for index, (keys, values) in enumerate(layers):
            cache.keys[index][row, :, start : start + reused] = keys[0, :, :reused]
            cache.values[index][row, :, start : start + reused] = values[0, :, :reused]
        done = min(done, start + reused)
    cache.length = done
    return PendingPrefill(cache=cache, input_ids=input_ids.to(runner.device), done=done)


def prefill_chunk(runner: BatchedModel, pending: PendingPrefill, columns: int) -> None:
    """Feed the next `columns` columns (at least one) of the pending prompts; after the last
    one, `pending.logits` holds each prompt's next-token logits."""
    assert pending.remaining > 0
    end = pending.done + max(1, min(columns, pending.remaining))
    logits = runner.forward(pending.cache, pending.input_ids[:, pending.done : end], pending.done)
    pending.done = end
    if pending.remaining == 0:
        pending.logits = logits


def finish_prefill(pending: PendingPrefill) -> RunningBatch:
    """The prefilled prompts as a batch of their own (next tokens still to be set)."""
    assert pending.remaining == 0
    rows = pending.rows
    device = pending.input_ids.device
    return RunningBatch(
        cache=pending.cache,
        next_token_ids=torch.zeros(rows, 1, dtype=torch.long, device=device),
        history=torch.empty(rows, 0, dtype=torch.long, device=device),  # [rows, 0]
    )


def prefill(
    runner: BatchedModel, prompts: list[list[int]], chunk_columns: int | None = None
) -> tuple[RunningBatch, torch.Tensor]:
    """All of `start_prefill`, `prefill_chunk` and `finish_prefill` at once: the batch and
    each prompt's next-token logits [prompts, vocab]."""
    pending = start_prefill(runner, prompts)
    while pending.remaining:
        prefill_chunk(runner, pending, chunk_columns or pending.remaining)
    assert pending.logits is not None
    return finish_prefill(pending), pending.logits


def join(batch: RunningBatch | None, incoming: RunningBatch, row_capacity: int) -> RunningBatch:
    """`incoming`'s rows appended after `batch`'s (a new batch of `row_capacity` rows when
    there is none yet), both left-padded to a common length."""
    if batch is None:
        cache = incoming.cache
        batch = RunningBatch(
            cache=KVCache(
                cache.layer_is_sliding,
                cache.keys[0].shape[1],
                cache.keys[0].shape[3],
                cache.keys[0].dtype,
                cache.keys[0].device,
                row_capacity,
                cache.length + 1,
                cache.sliding_window,
            ),
            next_token_ids=incoming.next_token_ids[:0],
            history=incoming.history[:0],
        )
    batch.cache.append(incoming.cache)
    batch.next_token_ids = torch.cat([batch.next_token_ids, incoming.next_token_ids], dim=0)
    steps = max(batch.history.shape[1], incoming.history.shape[1])
    batch.history = torch.cat(
        [_left_pad_history(batch.history, steps), _left_pad_history(incoming.history, steps)]
    )  # [rows, steps]
    return batch


def decode_step(runner: BatchedModel, batch: RunningBatch) -> torch.Tensor:
    """Feeds every row's next token; returns logits [batch, vocab] for the token after it."""
    batch.cache.reserve(1)
    return runner.forward(batch.cache, batch.next_token_ids, batch.cache.length)


def set_next_tokens(batch: RunningBatch, token_ids: list[int]) -> None:
    """Each row's sampled token, fed by the next decode step."""
    batch.next_token_ids = torch.tensor(
        token_ids, dtype=torch.long, device=batch.next_token_ids.device
    ).unsqueeze(1)  # [batch, 1]
    batch.history = torch.cat([batch.history, batch.next_token_ids], dim=1)  # [batch, steps+1]


def keep_rows(batch: RunningBatch, rows: list[int]) -> RunningBatch | None:
    """The batch restricted to `rows` (in that order), or None when no row is left. Columns
    that became padding in every remaining row are cut off so attention stops reading them."""
    if not rows:
        return None
    if rows == list(range(batch.size)):
        return batch
    batch.cache.keep(rows)
    index = torch.tensor(rows, dtype=torch.long, device=batch.next_token_ids.device)
    batch.next_token_ids = batch.next_token_ids.index_select(0, index)
    history = batch.history.index_select(0, index)
    used_steps = (history != NO_TOKEN).any(dim=0).nonzero()
    first_step = int(used_steps[0].item()) if used_steps.numel() else history.shape[1]
    batch.history = history[:, first_step:]
    return batch


def row_layers(batch: RunningBatch, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One row's keys and values without its left padding, per layer [1, heads, real, dim]."""
    return batch.cache.row_layers(row)


def _left_pad_history(history: torch.Tensor, steps: int) -> torch.Tensor:
    padding = history.new_full((history.shape[0], steps - history.shape[1]), NO_TOKEN)
    return torch.cat([padding, history], dim=1)  # [rows, steps]
