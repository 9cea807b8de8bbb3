"""Linear layers with their weights prepacked for oneDNN, on CPU.

torch's plain CPU matmul reorders a bf16 weight into oneDNN's blocked layout on every call;
packing it once at load (`PackedLinear`, the reorder torch's own compiler applies when it
freezes a model) made the 270M's decode steps ~15% (1 row) to ~25% (8 rows) faster on this
machine kind, and its 262k-vocabulary output layer about twice as fast at 8 rows
(docs/benchmarks.md). Results equal the plain layer's to float rounding.

Every `nn.Linear` of the model is replaced, its plain weight freed; a weight shared with
another module (the output layer tied to the token embedding) is packed as a copy, the only
extra memory (`pack_linears` returns its size).

A CPU without bf16 instructions gets `DualLinear` instead. On AVX2 only, oneDNN refuses to
pack bf16; on AVX-512 without AVX512-BF16 or AMX it packs bf16 but emulates it, converting
every weight to float32 on every call. Either way torch's bf16 matmul there is fine for one
row (decode is bound by memory reads) but about 2x slower than float32 from a few rows on
(8-row steps, prefill). Each layer keeps its bf16 weight for few rows and a packed float32 copy
for more: +4 bytes per parameter (+1.07 GB for the 270M). Packing is skipped, with a log
line, where it does not apply (not CPU, no oneDNN, another dtype, a quantized model) or
fails its check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
import torch
from torch import nn

log = structlog.get_logger(__name__)

_PACKED_DTYPES = (torch.bfloat16, torch.float32)
# Rows the packed layout is tuned for (decode of a small batch); any row count works.
_ROWS_HINT = 8
# DualLinear computes up to this many rows from its bf16 weight, more from its float32 copy.
# The 262k-vocabulary output layer, one thread (docs/benchmarks.md): on AVX2, 48 ms bf16 vs
# 97 ms packed float32 at 1 row and 320 vs 141 ms at 8 rows; on AVX-512 without bf16
# instructions, 52 vs 73 ms at 1 row but already 82 vs 75 ms at 2 rows (2 threads: 67 vs
# 50 ms), so there one row only.
DUAL_MAX_BF16_ROWS = {"AVX2": 2, "AVX512": 1}
# /proc/cpuinfo flags of instructions that compute bf16 natively (oneDNN's fast bf16 paths).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_CPUINFO = Path("/proc/cpuinfo")
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


class DualLinear(nn.Module):
    """`nn.Linear` in bf16 for up to `max_bf16_rows` rows (DUAL_MAX_BF16_ROWS for this CPU's
    vector instructions), from a packed float32 copy of its weight for more (the result rounded
    back to bf16)."""

    def __init__(self, linear: nn.Linear, max_bf16_rows: int | None = None) -> None:
        super().__init__()
        self.max_bf16_rows = (
            max_bf16_rows
            if max_bf16_rows is not None
            else DUAL_MAX_BF16_ROWS.get(torch.backends.cpu.get_cpu_capability(), 1)
        )
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # Kept as a plain attribute: it may be shared (the tied embedding), and is not saved.
        self.weight = linear.weight.detach()
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), False)
        self.float_bias = None if self.bias is None else self.bias.float()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.float(), _ROWS_HINT)
        self.packed_bytes = self.weight.nelement() * 4

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        rows = inputs.reshape(-1, self.in_features)  # [tokens, in]
        if rows.shape[0] <= self.max_bf16_rows:
            output = nn.functional.linear(rows, self.weight, self.bias)  # [tokens, out]
        else:
            output = torch.ops.mkldnn._linear_pointwise(
                rows.float(), self.packed, self.float_bias, "none", [], ""
            ).to(inputs.dtype)  # [tokens, out]
        return output.view(*inputs.shape[:-1], self.out_features)


def cpu_has_native_bf16(cpuinfo: Path = _CPUINFO) -> bool | None:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX), from the flags in
    /proc/cpuinfo; None where there is no such file to read (not Linux)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return not NATIVE_BF16_FLAGS.isdisjoint(line.partition(":")[2].split())
    return None


def packing_kind(dtype: torch.dtype) -> type[PackedLinear] | type[DualLinear] | None:
    """What replaces the model's linear layers on this CPU: packed weights of `dtype`, or for
    bf16 on a CPU without bf16 instructions (oneDNN refuses to pack it, or would emulate it)
    the dual layer; None: neither."""
    emulated = dtype == torch.bfloat16 and cpu_has_native_bf16() is False
    if not emulated:
        try:
            torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=dtype), _ROWS_HINT)
            return PackedLinear
        except RuntimeError:
            pass
    if dtype != torch.bfloat16:
        return None
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8), _ROWS_HINT)
    except RuntimeError:
        return None
    return DualLinear


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
    kind = packing_kind(dtype)
    if kind is None:
        log.warning("weight_packing_skipped", reason=f"oneDNN cannot pack {dtype} on this CPU")
        return 0
    replacements: list[tuple[nn.Module, str, PackedLinear | DualLinear]] = []
    try:
        for parent in model.modules():
            for name, child in parent.named_children():
                if type(child) is nn.Linear and child.weight.dtype == dtype:
                    replacements.append((parent, name, kind(child)))
        if replacements:
            parent, name, packed = replacements[0]
            _check(getattr(parent, name), packed, dtype)
    except (RuntimeError, AttributeError, AssertionError) as exc:  # an op torch lacks, a bad result
        log.warning("weight_packing_skipped", reason=f"{type(exc).__name__}: {exc}")
        return 0
    extra = 0
    for parent, name, packed in replacements:
        weight = getattr(parent, name).weight
        if id(weight) in shared or kind is DualLinear:
            extra += packed.packed_bytes
        setattr(parent, name, packed)
    log.info("weights_packed", kind=kind.__name__, layers=len(replacements), extra_bytes=extra)
    return extra


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of parameters that some module other than a Linear also uses (a tied embedding)."""
    users: dict[int, int] = {}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            users[id(parameter)] = users.get(id(parameter), 0) + 1
    return {key for key, count in users.items() if count > 1}


def _check(plain: Any, packed: PackedLinear | DualLinear, dtype: torch.dtype) -> None:
    """The packed layer must give the plain layer's result on a random input."""
    with torch.inference_mode():
        inputs = torch.randn(3, packed.in_features, generator=torch.Generator().manual_seed(0))
        inputs = inputs.to(dtype)
        expected = plain(inputs).float()
        got = packed(inputs).float()
    scale = expected.abs().max().clamp(min=1e-6)
    error = float(((got - expected).abs().max() / scale).item())
    assert error <= _CHECK_TOLERANCE[dtype], f"packed result off by {error:.2e} of its scale"
