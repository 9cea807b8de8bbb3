"""Choosing the next token of every row of a batch from its logits, each row with its own
temperature, top-k, top-p and (optionally seeded) random generator."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from inference.requests import SamplingParams


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
    # One argmax over the whole batch serves every greedy row.
    greedy_ids: list[int] = logits.argmax(dim=-1).tolist()
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
    greedy_ids: list[int] = logits.argmax(dim=-1).tolist()
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
