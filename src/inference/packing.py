"""Linear layers with their weights prepacked for oneDNN, on CPU.

torch's plain CPU matmul reorders a bf16 weight into oneDNN's blocked layout on every call;
packing it once at load (`PackedLinear`, the reorder torch's own compiler applies when it
freezes a model) made the 270M's decode steps ~15% (1 row) to ~25% (8 rows) faster on this
machine kind, and its 262k-vocabulary output layer about twice as fast at 8 rows
(docs/benchmarks.md). Results equal the plain layer's to float rounding.

Every `nn.Linear` of the model is replaced, its plain weight freed; a weight shared with
another module (the output layer tied to the token embedding) is packed as a copy, the only
extra memory (`pack_linears` returns its size). Packing is skipped, with a log line, where
it does not apply (not CPU, no oneDNN, another dtype, a quantized model) or fails its check."""

from __future__ import annotations

from typing import Any

import structlog
import torch
from torch import nn

log = structlog.get_logger(__name__)

_PACKED_DTYPES = (torch.bfloat16, torch.float32)
# Rows the packed layout is tuned for (decode of a small batch); any row count works.
_ROWS_HINT = 8
# Packed and plain results of the check must agree this closely (relative to their scale).
_CHECK_TOLERANCE = {torch.bfloat16: 2e-2, torch.float32: 1e-4}


class PackedLinear(nn.Module):
    """`nn.Linear` computed by oneDNN from a weight packed once."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        # An opaque oneDNN tensor, kept as a plain attribute: not a parameter to save or move.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, _ROWS_HINT)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), False)
        self.packed_bytes = weight.nelement() * weight.element_size()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        rows = inputs.reshape(-1, self.in_features)  # [tokens, in]
        output: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            rows, self.packed, self.bias, "none", [], ""
        )  # [tokens, out]
        return output.view(*inputs.shape[:-1], self.out_features)


def can_pack(device: torch.device, dtype: torch.dtype, quantized: bool) -> str | None:
    """None when packing applies, else why not."""
    if device.type != "cpu":
        return f"device {device.type} (packing is for CPU)"
    if quantized:
        return "quantized model"
    if dtype not in _PACKED_DTYPES:
        return f"dtype {dtype}"
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]  # untyped
        return "torch was built without oneDNN"
    return None


def pack_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Replace every `nn.Linear` of `model` by a `PackedLinear`. Returns the bytes of packed
    copies of shared weights (the rest replaces plain weights). On any failure the model is
    left as it was and 0 returned: packing only saves time."""
    shared = _shared_weights(model)
    replacements: list[tuple[nn.Module, str, PackedLinear]] = []
    try:
        for parent in model.modules():
            for name, child in parent.named_children():
                if type(child) is nn.Linear and child.weight.dtype == dtype:
                    replacements.append((parent, name, PackedLinear(child)))
        if replacements:
            parent, name, packed = replacements[0]
            _check(getattr(parent, name), packed, dtype)
    except (RuntimeError, AttributeError, AssertionError) as exc:  # an op torch lacks, a bad result
        log.warning("weight_packing_skipped", reason=f"{type(exc).__name__}: {exc}")
        return 0
    extra = 0
    for parent, name, packed in replacements:
        weight = getattr(parent, name).weight
        if id(weight) in shared:
            extra += packed.packed_bytes
        setattr(parent, name, packed)
    log.info("weights_packed", layers=len(replacements), extra_bytes=extra)
    return extra


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of parameters that some module other than a Linear also uses (a tied embedding)."""
    users: dict[int, int] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            users[id(parameter)] = users.get(id(parameter), 0) + 1
    return {key for key, count in users.items() if count > 1}


def _check(plain: Any, packed: PackedLinear, dtype: torch.dtype) -> None:
    """The packed layer must give the plain layer's result on a random input."""
    with torch.inference_mode():
        inputs = torch.randn(3, packed.in_features, generator=torch.Generator().manual_seed(0))
        inputs = inputs.to(dtype)
        expected = plain(inputs).float()
        got = packed(inputs).float()
    scale = expected.abs().max().clamp(min=1e-6)
    error = float(((got - expected).abs().max() / scale).item())
    assert error <= _CHECK_TOLERANCE[dtype], f"packed result off by {error:.2e} of its scale"
