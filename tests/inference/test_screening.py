"""`ScreenedLogits`: an output layer screened in int8 for a few rows. Against the exact layer
(float32 sums rounded to bf16): every screened logit within its stated bound, the best token
the exact layer's best (near ties included), more rows or a flat row computed exactly, and
only a large plain output layer replaced. Runs on any CPU (the int8 kernel exists on every
x86 build; it is only faster on AVX-512, where the loader uses it)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import Gemma3ForCausalLM

from inference import screening
from inference.screening import ScreenedLogits, screen_output_layer
from tests.inference.tiny_model import build_config

VOCAB, HIDDEN = 4096, 64


def _layer(seed: int) -> nn.Linear:
    """A bf16 output layer whose tokens' weights differ in scale by up to 30x, as a trained
    vocabulary's do (the screen's bound is per token)."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(HIDDEN, VOCAB, bias=False)
    with torch.no_grad():
        spread = torch.rand(VOCAB, 1, generator=generator) * 29 + 1
        layer.weight.copy_(torch.randn(VOCAB, HIDDEN, generator=generator) * 0.02 * spread)
    return layer.to(torch.bfloat16).eval()


def _exact(layer: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    return nn.functional.linear(inputs.float(), layer.weight.float())  # [rows, vocab]


@pytest.mark.parametrize("seed", range(6))
def test_best_token_is_the_exact_layers_and_every_logit_within_its_bound(seed: int) -> None:
    layer = _layer(seed)
    screened = ScreenedLogits(layer, layer.weight)
    generator = torch.Generator().manual_seed(100 + seed)
    with torch.inference_mode():
        for rows in range(1, screened.max_rows + 1):
            inputs = (torch.randn(rows, HIDDEN, generator=generator) * 4).to(torch.bfloat16)
            got = screened(inputs).float()
            exact = _exact(layer, inputs)
            for row in range(rows):
                bounds = screened.bounds(inputs[row], exact[row].to(torch.bfloat16))
                assert bool(((got[row] - exact[row]).abs() <= bounds).all())
                best = int(got[row].argmax())
                # The exact best, or a token within the rounding of one bf16 result of it.
                spacing = float(exact[row].abs().max()) * 2**-7
                assert float(exact[row, best]) >= float(exact[row].max()) - spacing


def test_a_near_tie_int8_cannot_see_is_decided_exactly() -> None:
    """Two tokens whose weights round to the same int8 steps: the screen gives them the same
    logit, the rescoring tells them apart, and the better one wins."""
    layer = _layer(0)
    inputs = torch.zeros(1, HIDDEN, dtype=torch.bfloat16)
    inputs[0, 0] = 1.0
    with torch.no_grad():
        layer.weight[7] = 0.0
        layer.weight[7, 1] = 100.0  # sets the token's scale: one int8 step is 100/127
        layer.weight[9] = layer.weight[7]
        layer.weight[7, 0] = 2.0
        layer.weight[9, 0] = 2.015625  # the next bf16 after 2.0, the same int8 step
    screened = ScreenedLogits(layer, layer.weight)
    with torch.inference_mode():
        approximate = torch._weight_int8pack_mm(inputs, screened.quantized, screened.scales)
        assert float(approximate[0, 7]) == float(approximate[0, 9])  # int8 cannot tell
        got = screened(inputs)
    assert int(got[0].argmax()) == 9
    assert float(got[0, 9]) == 2.015625 and float(got[0, 7]) == 2.0


def test_more_rows_and_flat_rows_get_the_exact_layer() -> None:
    layer = _layer(1)
    screened = ScreenedLogits(layer, layer.weight, max_rows=2, max_candidates=8)
    generator = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        many = torch.randn(3, 1, HIDDEN, generator=generator).to(torch.bfloat16)
        assert torch.equal(screened(many), layer(many))
        flat = torch.zeros(1, HIDDEN, dtype=torch.bfloat16)  # every logit 0: all candidates
        assert torch.equal(screened(flat), layer(flat))


def test_only_a_large_plain_output_layer_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model's vocabulary is below the threshold: unchanged. With the threshold
    lowered its output layer is screened, the exact layer kept inside it, and one row's
    greedy token is the unscreened model's."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Gemma3ForCausalLM(build_config(vocab_size=400)).to(torch.bfloat16).eval()
    before = model.get_output_embeddings()
    assert screen_output_layer(model) == 0 and model.get_output_embeddings() is before
    monkeypatch.setattr(screening, "MIN_SCREENED_VOCAB", 1)
    input_ids = torch.tensor([[2, 40, 41, 42, 43]])
    with torch.inference_mode():
        expected = model(input_ids=input_ids).logits[0, -1].float()
        extra = screen_output_layer(model)
        got = model(input_ids=input_ids).logits[0, -1].float()
    layer = model.get_output_embeddings()
    assert isinstance(layer, ScreenedLogits) and layer.exact is before
    assert extra == layer.quantized.nelement() + 4 * layer.scales.nelement()
    assert int(got.argmax()) == int(expected.argmax())
    assert torch.allclose(got, expected, atol=0.05)
