"""The output layer of a large vocabulary screened in int8 for a few rows (`ScreenedLogits`).

Decoding one or a few streams on CPU spends a third of each step in the output layer: the
270M's 262k-token vocabulary is 168M of its 268M parameters, read for every token. On AVX-512
hosts torch's int8 weight-only kernel (`_weight_int8pack_mm`) reads it 2x faster than bf16 or
float32 at 1-4 rows (docs/benchmarks.md). An int8 weight alone would change the logits,
though, and with them which token wins; here it only screens:

1. every row's logits are computed from an int8 copy of the weight (one scale per token);
2. each such logit is within its bound of the exact value (`ScreenedLogits.bounds`): rounding
   a weight to int8 moves it by at most half its token's scale, so the logit moves by at most
   half that scale times the row's L1 norm, plus the rounding of the bf16 results;
3. every token whose screened logit plus its bound reaches the best screened logit less its
   bound could be the best token, and is computed again exactly (float32 sums rounded to the
   model's dtype, as the float32 path computes them): on the 270M, 1-600 tokens a step.

So the best token gets its exact logit, and so does every token that might be it: greedy
decoding picks the token the exact layer picks (up to a tie within one bf16 rounding). The
other tokens keep a logit within its bound of the exact one; what that means for sampling is
stated in docs/inference.md. A row with more than MAX_CANDIDATES candidates (a flat
distribution), and batches of more than `max_rows` rows, get the layer it replaced, which is
faster there.
"""

from __future__ import annotations

from typing import Any

import structlog
import torch
from torch import nn

log = structlog.get_logger(__name__)

# Up to this many rows the int8 screen is faster than the float32 output layer (the 270M's,
# 2 threads, AVX-512 without bf16: 19-25 ms against 36-41 ms at 1-4 rows; 46 vs 47 at 8).
SCREENED_MAX_ROWS = 4
# A row with more candidates than this (a flat distribution) gets the exact layer instead.
MAX_CANDIDATES = 4096
# Output layers with fewer tokens are not worth the extra copy.
MIN_SCREENED_VOCAB = 32_768
# Relative rounding of one bf16 result (8 bits of mantissa: half an ulp is 2**-8 of the value
# at most), counted for the screened logit and the exact one it is compared with.
# Rows of the weight quantized at once (bounds the float32 copy made at load).
_QUANTIZED_BLOCK = 16_384
_RESULT_ROUNDING = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}


class ScreenedLogits(nn.Module):
    """Replaces a model's output layer: int8 screen plus exact rescoring up to `max_rows`
    rows, `exact` (the layer it replaces, any `nn.Module` computing the same linear map of
    `weight`) for more."""

    def __init__(
        self,
        exact: nn.Module,
        weight: torch.Tensor,
        max_rows: int = SCREENED_MAX_ROWS,
        max_candidates: int = MAX_CANDIDATES,
    ) -> None:
        super().__init__()
        if weight.dtype not in _RESULT_ROUNDING:
            raise ValueError(f"cannot screen a {weight.dtype} output layer")
        self.exact = exact
        self.max_rows = max_rows
        self.max_candidates = max_candidates
        self.out_features, self.in_features = weight.shape
        # Plain attributes: the weight is shared with the embedding, the copies are derived.
        self.weight = weight.detach()
        self.rounding = _RESULT_ROUNDING[weight.dtype]
        vocab = self.weight.shape[0]
        self.scales = torch.empty(vocab, dtype=weight.dtype)  # [vocab]
        self.quantized = torch.empty(self.weight.shape, dtype=torch.int8)  # [vocab, in]
        for start in range(0, vocab, _QUANTIZED_BLOCK):  # float32 copies of a block at a time
            block = self.weight[start : start + _QUANTIZED_BLOCK].float()
            scales = (block.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
            # The kernel takes its scales in the inputs' dtype: round them up (never down, so
            # no weight needs more than 127 steps), then quantize with the scales it will use.
            used = (scales * (1 + 2 * self.rounding)).to(weight.dtype)
            self.scales[start : start + _QUANTIZED_BLOCK] = used
            steps = (block / used.float().unsqueeze(1)).round().clamp(-127, 127)
            self.quantized[start : start + _QUANTIZED_BLOCK] = steps.to(torch.int8)
        self.half_scales = self.scales.float() / 2  # [vocab]
        self.extra_bytes = self.quantized.nelement() + self.scales.nelement() * 4

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        rows = inputs.reshape(-1, self.in_features)  # [rows, in]
        if rows.shape[0] > self.max_rows:
            output: torch.Tensor = self.exact(inputs)
            return output
        logits = torch._weight_int8pack_mm(rows, self.quantized, self.scales)  # [rows, vocab]
        for row in range(rows.shape[0]):
            candidates = self.candidates(rows[row], logits[row])
            if candidates is None:  # too flat to screen: this row's exact logits
                logits[row] = self.exact(rows[row : row + 1])[0]
                continue
            exact = nn.functional.linear(
                rows[row].float(), self.weight.index_select(0, candidates).float()
            )  # [candidates]
            logits[row].index_copy_(0, candidates, exact.to(logits.dtype))
        return logits.view(*inputs.shape[:-1], self.out_features)

    def bounds(self, inputs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """For one row, how far each screened logit can be from the exact one: int8 rounding
        of the token's weights (half its scale times the input's L1 norm, +2% for the kernel's
        float32 sums of up to 127 x |input| per term), plus the rounding of the screened and of
        the exact result (relative to the row's largest logit) [vocab]."""
        l1 = float(inputs.float().abs().sum()) * 1.02
        rounding = float(logits.float().abs().max()) * 2 * self.rounding + 1e-6
        return self.half_scales * l1 + rounding

    def candidates(self, inputs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """Tokens whose exact logit may reach the best exact logit of this row: those whose
        screened logit plus its bound reaches the best screened logit less its bound
        [candidates]; None when there are more than `max_candidates`."""
        bounds = self.bounds(inputs, logits)
        screened = logits.float()
        floor = (screened - bounds).max()
        candidates = (screened + bounds >= floor).nonzero().squeeze(1)
        return None if candidates.numel() > self.max_candidates else candidates


def int8_screen_pays() -> bool:
    """Whether torch's int8 weight-only kernel is faster than the bf16 or float32 output layer
    on this CPU: on AVX-512 (2x at 1-4 rows); on AVX2 it was no faster (docs/benchmarks.md)."""
    return torch.backends.cpu.get_cpu_capability() in {"AVX512", "AVX512_BF16", "AMX"}


def screen_output_layer(model: Any) -> int:
    """Replace the output layer of a causal LM by a `ScreenedLogits` where it is a plain
    linear layer of a large vocabulary. Returns the bytes of the int8 copy (0: not replaced).
    Call before `pack_linears`: the exact layer it keeps is then packed like the others."""
    output = model.get_output_embeddings()
    if type(output) is not nn.Linear or output.bias is not None:
        log.info("output_layer_not_screened", reason=f"output layer is {type(output).__name__}")
        return 0
    if output.out_features < MIN_SCREENED_VOCAB:
        return 0
    screened = ScreenedLogits(output, output.weight)
    model.set_output_embeddings(screened)
    log.info(
        "output_layer_screened",
        vocab=screened.out_features,
        max_rows=screened.max_rows,
        extra_bytes=screened.extra_bytes,
    )
    return screened.extra_bytes
