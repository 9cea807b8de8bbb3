"""`DualLinear`, the linear layer of CPUs without bf16 instructions: bf16 for few rows exactly
as the plain layer computes them, float32 from a packed copy for more rows (close to a float32
reference), bf16 out either way; and which CPUs get it (`packing_kind`, from the CPU's flags).
Runs on any CPU where oneDNN packs float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from inference import packing
from inference.packing import DualLinear, PackedLinear, cpu_has_native_bf16, packing_kind

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(),  # type: ignore[no-untyped-call]  # untyped
    reason="torch was built without oneDNN",
)


@pytest.fixture
def linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(64, 96, bias=True).to(torch.bfloat16).eval()


class TestDualLinear:
    def test_few_rows_are_the_plain_bf16_layer(self, linear: nn.Linear) -> None:
        """Up to `max_bf16_rows` rows the result is the plain layer's, bit for bit."""
        dual = DualLinear(linear, max_bf16_rows=2)
        with torch.inference_mode():
            for rows in range(1, dual.max_bf16_rows + 1):
                inputs = torch.randn(rows, 1, 64).to(torch.bfloat16)
                assert torch.equal(dual(inputs), linear(inputs))

    def test_more_rows_use_float32(self, linear: nn.Linear) -> None:
        """8 rows (and a [rows, tokens, in] input) are computed in float32 from the same
        weights and rounded to bf16: within bf16 rounding of a float32 reference."""
        dual = DualLinear(linear)
        inputs = torch.randn(8, 3, 64).to(torch.bfloat16)
        with torch.inference_mode():
            got = dual(inputs)
            expected = nn.functional.linear(
                inputs.float(), linear.weight.float(), linear.bias.float()
            )
        assert got.dtype == torch.bfloat16 and got.shape == (8, 3, 96)
        assert torch.allclose(got.float(), expected, rtol=1e-2, atol=1e-2)


class TestWhichCpusGetIt:
    def test_native_bf16_is_read_from_the_cpu_flags(self, tmp_path: Path) -> None:
        """AVX512-BF16 or AMX-BF16 in the flags line: native; AVX-512 alone or AVX2: not;
        no flags line or no file (not Linux): unknown."""
        cpuinfo = tmp_path / "cpuinfo"
        for flags, native in (
            ("fpu sse2 avx avx2 fma", False),
            ("avx2 avx512f avx512bw avx512vl avx512_vnni", False),
            ("avx2 avx512f avx512_bf16", True),
            ("avx512f amx_tile amx_bf16", True),
        ):
            cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
            assert cpu_has_native_bf16(cpuinfo) is native, flags
        cpuinfo.write_text("processor\t: 0\n")
        assert cpu_has_native_bf16(cpuinfo) is None
        assert cpu_has_native_bf16(tmp_path / "absent") is None

    def test_bf16_without_bf16_instructions_gets_the_dual_layer(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Even where oneDNN would pack bf16 (emulating it on AVX-512), a CPU whose flags lack
        bf16 instructions gets DualLinear; float32 is packed as it is on every CPU."""
        monkeypatch.setattr(packing, "cpu_has_native_bf16", lambda: False)
        assert packing_kind(torch.bfloat16) is DualLinear
        assert packing_kind(torch.float32) is PackedLinear

    def test_the_row_limit_follows_the_vector_instructions(
        self, linear: nn.Linear, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """2 bf16 rows on AVX2, 1 on AVX-512 (where 2 rows are already faster in float32)."""
        for capability, rows in (("AVX2", 2), ("AVX512", 1), ("DEFAULT", 1)):
            monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
            assert DualLinear(linear).max_bf16_rows == rows
