"""bitsandbytes 4-bit loading of a catalog entry, on CPU like everything else here."""

from __future__ import annotations

from tests.inference.conftest import TINY, TINY_INT4, EngineFactory
from tests.inference.helpers import collect, request


class TestBitsAndBytes:
    async def test_int4_entry_loads_smaller_and_generates(self, make_engine: EngineFactory) -> None:
        """An entry with quantization bnb-int4 loads 4-bit linear layers, takes less memory
        than the same weights unquantized, and streams a completion."""
        engine = make_engine()
        quantized = await engine.load(TINY_INT4)
        plain = await engine.load(TINY)
        linear_kinds = {type(module).__name__ for module in quantized.model.modules()}
        assert "Linear4bit" in linear_kinds
        assert quantized.memory_bytes < plain.memory_bytes
        text, finished = await collect(engine.stream(request(TINY_INT4, "hello", 8)))
        assert finished.model_id_answered == TINY_INT4
        assert finished.completion_tokens >= 1
        assert finished.finish_reason in ("stop", "length")
        assert finished.finish_reason == "stop" or len(text) > 0


class TestGenerationFailure:
    async def test_failed_forward_ends_request_and_engine_keeps_serving(
        self, make_engine: EngineFactory
    ) -> None:
        """When the quantized model's forward raises (as a 4-bit kernel does on shapes it
        cannot handle), the request ends with finish_reason 'error' and the message; the same
        model's scheduler and other models keep answering."""
        engine = make_engine()
        failing = await engine.load(TINY_INT4)
        kernel_error = "N must be divisible by block_n"

        def kernel_fails(module: object, args: object) -> None:
            raise AssertionError(kernel_error)

        failing.model.register_forward_pre_hook(kernel_fails)
        for _ in range(2):
            text, finished = await collect(engine.stream(request(TINY_INT4, "hi", 4)))
            assert finished.finish_reason == "error"
            assert finished.error_code == "generation_failed"
            assert finished.error and kernel_error in finished.error
            assert text == "" and finished.completion_tokens == 0
        _, healthy = await collect(engine.stream(request(TINY, "hi", 4)))
        assert healthy.finish_reason in ("stop", "length")


class TestOutOfMemoryClassification:
    def test_failed_cpu_allocation_is_out_of_memory(self) -> None:
        """A real failed CPU allocation (a plain RuntimeError in torch) counts as out of
        memory, so the engine reports it as such and suggests a smaller model."""
        import pytest
        import torch

        from inference.errors import OutOfMemory
        from inference.loading import is_out_of_memory

        with pytest.raises(RuntimeError) as raised:
            torch.empty(2**62, dtype=torch.uint8)
        assert is_out_of_memory(raised.value)
        assert not is_out_of_memory(RuntimeError("shape mismatch"))
        assert "smaller" in str(OutOfMemory("m", "loading"))
