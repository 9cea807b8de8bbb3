"""Choosing the next token of every row of a batch from its logits, each row with its own
temperature, top-k, top-p and (optionally seeded) random generator; and the model's
repetition guard, applied to the whole batch's logits before that choice."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from inference.prompting import Prompting
from inference.requests import SamplingParams

# Marks the left padding of a batch's reply history (no token id is negative).
NO_TOKEN = -1


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def sample_next_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """logits: [batch, vocab]. One token id per row."""
    assert logits.dim() == 2 and logits.shape[0] == len(params) == len(generators)
    greedy_ids = _greedy_ids(logits)
    return [
        greedy_ids[row] if sampling.greedy else _sample_row(logits[row], sampling, generator)
        for row, (sampling, generator) in enumerate(zip(params, generators, strict=True))
    ]


def sample_each_row(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int | Exception]:
    """Like `sample_next_tokens`, but a row whose sampling fails gets its exception instead of
    a token, so that one bad row ends only its own request."""
    assert logits.dim() == 2 and logits.shape[0] == len(params) == len(generators)
    greedy_ids = _greedy_ids(logits)
    tokens: list[int | Exception] = []
    for row, (sampling, generator) in enumerate(zip(params, generators, strict=True)):
        if sampling.greedy:
            tokens.append(greedy_ids[row])
            continue
        try:
            tokens.append(_sample_row(logits[row], sampling, generator))
        except Exception as exc:  # e.g. non-finite probabilities from extreme logits
            tokens.append(exc)
    return tokens


def _greedy_ids(logits: torch.Tensor) -> list[int]:
    """One reduction over the whole batch serves every greedy row. In float32 and as `max`:
    on CPU an argmax over bf16 logits took 8 ms for 8 rows of the 262k vocabulary, converting
    then `max` 3 ms (both return the first of equal maxima)."""
    ids: list[int] = logits.float().max(dim=-1).indices.tolist()
    return ids


def _sample_row(
    logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
) -> int:
    scores = logits.float() / sampling.temperature  # [vocab]
    if sampling.top_k > 0:
        values, indices = torch.topk(scores, min(sampling.top_k, scores.shape[-1]))  # [k], sorted
    else:
        values, indices = torch.sort(scores, descending=True)  # [vocab]
    probabilities = torch.softmax(values, dim=-1)
    if sampling.top_p < 1.0:
        # Keep the smallest prefix whose mass reaches top_p; the first token always stays.
        mass_before = torch.cumsum(probabilities, dim=-1) - probabilities
        probabilities = probabilities * (mass_before < sampling.top_p)
    choice = torch.multinomial(probabilities, num_samples=1, generator=generator)  # [1]
    return int(indices[choice].item())


def apply_repetition_guard(
    logits: torch.Tensor, history: torch.Tensor, prompting: Prompting
) -> torch.Tensor:
    """logits: [batch, vocab]; history: [batch, steps], each row's reply tokens so far,
    left-padded with NO_TOKEN. The logits (as float32) with the repetition penalty and the
    no-repeat n-gram ban applied, from each row's own reply only (never the prompt: a reply may
    reuse the question's words and the frame's turn markers, which end it). Sparse: only the
    reply's own token ids are read and written, never a pass over the vocabulary, and a row's
    result does not depend on the other rows."""
    if not prompting.guards_repetition or history.shape[1] == 0:
        return logits
    scores = logits.to(torch.float32, copy=True)  # [batch, vocab]
    present = history != NO_TOKEN  # [batch, steps]
    if prompting.repetition_penalty != 1.0:
        # Padding points at the row's last token (a real one unless the row has none: history
        # is left-padded), so every write to one index writes one value: scatter_ is exact.
        token_ids = torch.where(present, history, history[:, -1:].clamp(min=0))  # [batch, steps]
        seen = scores.gather(1, token_ids)  # [batch, steps]
        penalty = prompting.repetition_penalty
        penalised = torch.where(seen > 0, seen / penalty, seen * penalty)
        scores.scatter_(1, token_ids, torch.where(present[:, -1:], penalised, seen))
    size = prompting.no_repeat_ngram_size
    if size and history.shape[1] >= size:
        _ban_repeated_ngrams(scores, history, present, size)
    return scores


def _ban_repeated_ngrams(
    scores: torch.Tensor, history: torch.Tensor, present: torch.Tensor, size: int
) -> None:
    """Bans (in place), per row, every token that would complete an n-gram already in the
    reply: the token after each earlier occurrence of the reply's last n-1 tokens."""
    windows = history.unfold(1, size, 1)  # [batch, steps - n + 1, n]
    complete = present.unfold(1, size, 1).all(dim=-1)  # [batch, steps - n + 1]
    last = history[:, history.shape[1] - (size - 1) :]  # [batch, n - 1]
    matches = (windows[:, :, :-1] == last.unsqueeze(1)).all(dim=-1) & complete
    rows = torch.arange(history.shape[0], device=history.device).unsqueeze(1)  # [batch, 1]
    banned_rows = rows.expand_as(matches)[matches]  # [bans]
    banned_ids = windows[:, :, -1][matches]  # [bans]
    scores[banned_rows, banned_ids] = float("-inf")
