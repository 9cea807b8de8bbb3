"""`FusedGemmaRMSNorm`: the same result as transformers' `Gemma3RMSNorm`, bit for bit, on the
shapes the engine feeds it (a decode row, a batch, per-head query/key norms, a prefill), in
float32 and bf16; and `fuse_norms` replaces exactly the Gemma 3 norms of a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

from inference.fusing import FusedGemmaRMSNorm, fuse_norms

SHAPES = [(1, 1, 64), (8, 1, 64), (1, 1, 4, 32), (8, 23, 64), (3, 5, 2, 32)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_norm_equals_the_original(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    norm = Gemma3RMSNorm(shape[-1], eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[-1], generator=generator))
    norm = norm.to(dtype)
    inputs = (3 * torch.randn(*shape, generator=generator)).to(dtype)
    fused = FusedGemmaRMSNorm(norm)
    with torch.inference_mode():
        expected, got = norm(inputs), fused(inputs)
    assert got.dtype == dtype
    assert torch.equal(got, expected)


def test_fuse_norms_replaces_only_gemma_norms() -> None:
    model = nn.Sequential(Gemma3RMSNorm(16), nn.LayerNorm(16), nn.Sequential(Gemma3RMSNorm(8)))
    assert fuse_norms(model) == 2
    kinds = [type(module).__name__ for module in model.modules()]
    assert kinds.count("FusedGemmaRMSNorm") == 2
    assert "Gemma3RMSNorm" not in kinds and "LayerNorm" in kinds
