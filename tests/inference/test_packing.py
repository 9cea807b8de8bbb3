"""`DualLinear`, the linear layer of CPUs without bf16 instructions: bf16 for one or two
rows exactly as the plain layer computes them, float32 from a packed copy for more rows (close
to a float32 reference), bf16 out either way. Runs on any CPU where oneDNN packs float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inference.packing import DUAL_MAX_BF16_ROWS, DualLinear

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
        """Up to DUAL_MAX_BF16_ROWS rows the result is the plain layer's, bit for bit."""
        dual = DualLinear(linear)
        with torch.inference_mode():
            for rows in range(1, DUAL_MAX_BF16_ROWS + 1):
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
