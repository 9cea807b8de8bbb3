"""The running batch of one model: its KV cache, attention mask, next inputs and positions,
and the phases that change it: `prefill` (newly admitted prompts, together), `join` (their
cache left-padded into the running batch between decode steps), `decode_step` (one token for
every row) and `keep_rows` (finished rows leave). The batch also keeps each row's reply
tokens so far, for the repetition guard.

The cache is a plain `DynamicCache()` built without the model config, so every layer, the
sliding-window ones included, keeps full length and can be padded and concatenated alike; the
sliding window is still enforced by the attention mask the model builds from the 2-D mask.
Rows are left-padded as `generate` pads a batch: padding sits before a row's first token, so
distances between a row's own tokens, which the window and causal masks use, are unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from inference.sampling import NO_TOKEN


@dataclass
class RunningBatch:
    cache: DynamicCache
    attention_mask: torch.Tensor  # [batch, cache_length], 0 marks left padding
    next_token_ids: torch.Tensor  # [batch, 1], sampled but not yet fed to the model
    next_positions: torch.Tensor  # [batch], position id of each row's next token
    # [batch, steps]: each row's sampled reply tokens (next_token_ids included), left-padded
    # with NO_TOKEN like the attention mask.
    history: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.attention_mask.shape[0])

    @property
    def cache_length(self) -> int:
        return int(self.attention_mask.shape[1])


def prefill(
    model: Any, prompts: list[list[int]], device: torch.device
) -> tuple[RunningBatch, torch.Tensor]:
    """Runs new prompts through the model together, left-padded to a common length, as a
    batch of their own; returns it (next tokens still to be set) and the logits of each
    prompt's last position [prompts, vocab]. One forward serves all of them: on this
    memory-bound model that is far cheaper than one forward per prompt."""
    length = max(len(prompt) for prompt in prompts)
    input_ids = torch.zeros(len(prompts), length, dtype=torch.long)  # [prompts, length]
    attention_mask = torch.zeros(len(prompts), length, dtype=torch.long)  # [prompts, length]
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, length - len(prompt) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    # Positions count a row's own tokens; padding gets a harmless 0 (it is masked anyway).
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [prompts, length]
    cache = DynamicCache()
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    lengths = torch.tensor([len(prompt) for prompt in prompts], dtype=torch.long, device=device)
    batch = RunningBatch(
        cache=cache,
        attention_mask=attention_mask,
        next_token_ids=torch.zeros(len(prompts), 1, dtype=torch.long, device=device),
        next_positions=lengths,  # [prompts]
        history=_empty_history(len(prompts), device),
    )
    logits: torch.Tensor = output.logits[:, -1, :]
    return batch, logits


def prefill_after_prefix(
    model: Any,
    prefix_layers: tuple[tuple[torch.Tensor, torch.Tensor], ...],
    reused: int,
    prompt: list[int],
    device: torch.device,
) -> tuple[RunningBatch, torch.Tensor]:
    """Like `prefill` for one prompt whose first `reused` tokens' keys and values are known:
    only the rest goes through the model."""
    assert 0 < reused < len(prompt)
    cache = DynamicCache(
        ddp_cache_data=[(k[:, :, :reused, :], v[:, :, :reused, :]) for k, v in prefix_layers]
    )
    tail = torch.tensor([prompt[reused:]], dtype=torch.long, device=device)  # [1, new]
    attention_mask = torch.ones(1, len(prompt), dtype=torch.long, device=device)  # [1, all]
    output = model(
        input_ids=tail,
        attention_mask=attention_mask,
        position_ids=torch.arange(reused, len(prompt), device=device).unsqueeze(0),  # [1, new]
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    batch = RunningBatch(
        cache=cache,
        attention_mask=attention_mask,
        next_token_ids=torch.zeros(1, 1, dtype=torch.long, device=device),
        next_positions=torch.tensor([len(prompt)], dtype=torch.long, device=device),
        history=_empty_history(1, device),
    )
    logits: torch.Tensor = output.logits[:, -1, :]
    return batch, logits


def row_layers(batch: RunningBatch, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One row's keys and values without its left padding, per layer [1, heads, real, dim]
    (a row's real tokens are always its last columns)."""
    real = int(batch.attention_mask[row].sum().item())
    start = batch.cache_length - real
    return [
        (layer.keys[row : row + 1, :, start:, :], layer.values[row : row + 1, :, start:, :])
        for layer in _layers(batch.cache)
    ]


def join(batch: RunningBatch | None, incoming: RunningBatch) -> RunningBatch:
    """`incoming`'s rows appended after `batch`'s, both left-padded to a common length."""
    if batch is None:
        return incoming
    length = max(batch.cache_length, incoming.cache_length)
    _left_pad(batch, length - batch.cache_length)
    _left_pad(incoming, length - incoming.cache_length)
    for layer, new_layer in zip(_layers(batch.cache), _layers(incoming.cache), strict=True):
        layer.keys = torch.cat([layer.keys, new_layer.keys], dim=0)  # [rows, heads, len, dim]
        layer.values = torch.cat([layer.values, new_layer.values], dim=0)
    batch.attention_mask = torch.cat([batch.attention_mask, incoming.attention_mask], dim=0)
    batch.next_token_ids = torch.cat([batch.next_token_ids, incoming.next_token_ids], dim=0)
    batch.next_positions = torch.cat([batch.next_positions, incoming.next_positions], dim=0)
    steps = max(batch.history.shape[1], incoming.history.shape[1])
    batch.history = torch.cat(
        [_left_pad_history(batch.history, steps), _left_pad_history(incoming.history, steps)]
    )  # [rows, steps]
    return batch


def decode_step(model: Any, batch: RunningBatch) -> torch.Tensor:
    """Feeds every row's next token; returns logits [batch, vocab] for the token after it."""
    ones = batch.attention_mask.new_ones(batch.size, 1)
    attention_mask = torch.cat([batch.attention_mask, ones], dim=1)  # [batch, cache_length + 1]
    output = model(
        input_ids=batch.next_token_ids,  # [batch, 1]
        attention_mask=attention_mask,
        position_ids=batch.next_positions.unsqueeze(1),  # [batch, 1]
        past_key_values=batch.cache,
        use_cache=True,
    )
    batch.attention_mask = attention_mask
    batch.next_positions = batch.next_positions + 1
    logits: torch.Tensor = output.logits[:, -1, :]
    return logits


def set_next_tokens(batch: RunningBatch, token_ids: list[int]) -> None:
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
    index = torch.tensor(rows, dtype=torch.long, device=batch.attention_mask.device)
    mask = batch.attention_mask.index_select(0, index)
    first_used = int((mask.sum(dim=0) > 0).nonzero()[0].item())
    for layer in _layers(batch.cache):
        layer.keys = layer.keys.index_select(0, index)[:, :, first_used:, :]
        layer.values = layer.values.index_select(0, index)[:, :, first_used:, :]
    batch.attention_mask = mask[:, first_used:]
    batch.next_token_ids = batch.next_token_ids.index_select(0, index)
    batch.next_positions = batch.next_positions.index_select(0, index)
    history = batch.history.index_select(0, index)
    used_steps = (history != NO_TOKEN).any(dim=0).nonzero()
    first_step = int(used_steps[0].item()) if used_steps.numel() else history.shape[1]
    batch.history = history[:, first_step:]
    return batch


def _layers(cache: DynamicCache) -> list[Any]:
    # Typed loosely by transformers (some layer kinds hold no tensors); ours are all
    # DynamicLayer with `keys` and `values` of shape [batch, kv_heads, length, head_dim].
    return list(cache.layers)


def _left_pad(batch: RunningBatch, columns: int) -> None:
    if columns == 0:
        return
    for layer in _layers(batch.cache):
        batch_size, heads, _, head_dim = layer.keys.shape
        padding = layer.keys.new_zeros(batch_size, heads, columns, head_dim)
        layer.keys = torch.cat([padding, layer.keys], dim=2)  # [batch, heads, columns+len, dim]
        layer.values = torch.cat([padding, layer.values], dim=2)
    mask_padding = batch.attention_mask.new_zeros(batch.size, columns)
    batch.attention_mask = torch.cat([mask_padding, batch.attention_mask], dim=1)


def _empty_history(rows: int, device: torch.device) -> torch.Tensor:
    return torch.empty(rows, 0, dtype=torch.long, device=device)  # [rows, 0]


def _left_pad_history(history: torch.Tensor, steps: int) -> torch.Tensor:
    padding = history.new_full((history.shape[0], steps - history.shape[1]), NO_TOKEN)
    return torch.cat([padding, history], dim=1)  # [rows, steps]
