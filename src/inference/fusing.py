"""Gemma 3's RMSNorm in one fused op.

transformers computes each `Gemma3RMSNorm` in ten small ops (cast to float32, square, mean,
add, rsqrt, multiply, cast the weight, add one, multiply, cast back). The 270M runs 109 of them
per forward (six per layer and the final one); on a 2-core CPU each small op costs ~5-8 us of
dispatch whatever its size, ~4 ms of a ~70 ms single-row decode step (docs/benchmarks.md).
`FusedGemmaRMSNorm` computes the same thing with `torch.nn.functional.rms_norm` (one kernel)
and a scale (1 + weight, float32) computed once at load: cast, norm, cast back.

The result is the original's bit for bit on the shapes a decode step and a prefill feed (the
fused kernel squares, averages and scales in float32 as the original does; tests check
equality in float32 and bf16). Any other norm class is left alone."""

from __future__ import annotations

from typing import cast

import structlog
import torch
from torch import nn

log = structlog.get_logger(__name__)

_GEMMA_NORM_CLASSES = frozenset({"Gemma3RMSNorm"})


class FusedGemmaRMSNorm(nn.Module):
    """`Gemma3RMSNorm` (output = x / rms(x) * (1 + weight), in float32, cast back to x's
    dtype) as one fused norm op."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        weight = cast(torch.Tensor, norm.weight).detach()
        self.eps = float(cast(float, norm.eps))
        self.shape = (int(weight.shape[-1]),)
        self.scale: torch.Tensor
        self.register_buffer("scale", 1.0 + weight.float(), persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        output = nn.functional.rms_norm(inputs.float(), self.shape, self.scale, self.eps)
        return output.type_as(inputs)


def fuse_norms(model: nn.Module) -> int:
    """Replace every Gemma 3 RMSNorm of `model` by `FusedGemmaRMSNorm`; returns how many."""
    replacements = [
        (parent, name, FusedGemmaRMSNorm(child))
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child).__name__ in _GEMMA_NORM_CLASSES
    ]
    for parent, name, fused in replacements:
        setattr(parent, name, fused)
    if replacements:
        log.info("norms_fused", count=len(replacements))
    return len(replacements)
