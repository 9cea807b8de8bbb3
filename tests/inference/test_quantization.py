"""bitsandbytes 4-bit loading of a catalog entry, on CPU like everything else here."""

from __future__ import annotations

from helpers import collect, request

from conftest import TINY, TINY_INT4, EngineFactory


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
