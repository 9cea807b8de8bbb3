"""GGUF sources: converted once into the cache keyed by the file's hash, reused on later
loads, converted again when the file changes, and served by the engine."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gguf
import pytest
import torch
from safetensors.torch import load_file
from structlog.testing import capture_logs

from inference import Engine, InferenceSettings, load_catalog
from inference.gguf_cache import ensure_converted, is_converted
from inference.loading import load_model
from inference.progress import LoadingState, LoadProgress
from tests.inference.helpers import collect, request
from tests.inference.tiny_gguf import (
    conversion_lock_held,
    tiny_gguf_catalog_entry,
    tiny_gguf_model,
    write_tiny_gguf,
)

# Generous: only keeps a broken test from hanging; the tests wait on events, not on time.
WAIT_TIMEOUT_S = 120.0


def _events(logs: list[dict[str, object]]) -> list[object]:
    return [entry["event"] for entry in logs]


class TestConversionCache:
    def test_converts_once_then_reuses(self, tmp_path: Path) -> None:
        """The first call converts (faithfully: same logits as the source model); the second
        reuses the same directory without converting."""
        gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
        cache_dir = tmp_path / "cache"
        with capture_logs() as first_logs:
            converted = ensure_converted(gguf_path, cache_dir, torch.float32, show_progress=False)
        assert "gguf_conversion_finished" in _events(first_logs)
        assert is_converted(converted)
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
        probe = torch.tensor([[2, 10, 20, 30, 40]])
        with torch.inference_mode():
            expected = tiny_gguf_model(seed=0)(probe).logits
            assert torch.allclose(loaded(probe).logits, expected, atol=1e-5)
        with capture_logs() as second_logs:
            again = ensure_converted(gguf_path, cache_dir, torch.float32, show_progress=False)
        assert again == converted
        assert _events(second_logs) == ["gguf_conversion_reused"]
        assert [p.name for p in cache_dir.iterdir()] == [converted.name], "no staging left over"

    def test_changed_file_is_converted_again(self, tmp_path: Path) -> None:
        """A GGUF with different contents at the same path gets its own conversion."""
        gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", seed=0)
        cache_dir = tmp_path / "cache"
        first = ensure_converted(gguf_path, cache_dir, torch.float32, show_progress=False)
        write_tiny_gguf(gguf_path, seed=1)
        with capture_logs() as logs:
            second = ensure_converted(gguf_path, cache_dir, torch.float32, show_progress=False)
        assert second != first
        assert "gguf_conversion_started" in _events(logs)
        assert is_converted(first) and is_converted(second)


def _two_pass_reference(gguf_path: Path, target: Path) -> None:
    """The conversion as it was first written: transformers' own GGUF loading, each call
    parsing the file for itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


class TestSingleParse:
    def test_reads_the_gguf_once_with_the_same_output(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Parsing the GGUF's metadata (its vocabulary arrays) is most of a conversion, and
        transformers parses it once per call; the conversion parses it once, and writes the
        same files, tensor for tensor, as the calls that parse it each time."""
        gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
        reference = tmp_path / "reference"
        _two_pass_reference(gguf_path, reference)
        parses: list[object] = []
        original_init = gguf.GGUFReader.__init__

        def counting_init(self: gguf.GGUFReader, *args: object, **kwargs: object) -> None:
            parses.append(args[0] if args else kwargs.get("path"))
            original_init(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(gguf.GGUFReader, "__init__", counting_init)
        converted = ensure_converted(
            gguf_path, tmp_path / "cache", torch.float32, show_progress=False
        )
        assert len(parses) == 1, parses
        tensors, expected_tensors = (
            load_file(d / "model.safetensors") for d in (converted, reference)
        )
        assert tensors.keys() == expected_tensors.keys()
        for name, expected in expected_tensors.items():
            assert tensors[name].dtype == expected.dtype, name
            assert torch.equal(tensors[name].view(torch.uint8), expected.view(torch.uint8)), name
        for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
            assert (converted / name).read_bytes() == (reference / name).read_bytes(), name
        assert gguf.GGUFReader.__init__ is counting_init, "the conversion puts gguf back"


def _gguf_entry(tmp_path: Path, gguf_path: Path) -> object:
    catalog_path = tmp_path / "catalog.toml"
    catalog_path.write_text(tiny_gguf_catalog_entry("tiny-gguf", gguf_path), encoding="utf-8")
    return load_catalog(catalog_path, environ={}).get("tiny-gguf")


class TestConversionProgress:
    def test_a_first_load_reports_every_stage_in_order_and_never_goes_back(
        self, tmp_path: Path
    ) -> None:
        """A load that converts goes through hashing, reading the GGUF, the tokenizer, the
        weights (moved by the tensor bytes dequantized), saving, then the load of the
        converted copy; the fraction only grows and is 1 when the model is loaded. A second
        load (nothing to convert) skips the conversion's stages."""
        gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
        entry = _gguf_entry(tmp_path, gguf_path)
        settings = InferenceSettings(cache_dir=tmp_path / "cache")
        seen: list[LoadingState] = []
        load_model(entry, settings, progress=LoadProgress(on_change=seen.append))  # type: ignore[arg-type]
        stages = list(dict.fromkeys(state.stage for state in seen))
        assert stages == [
            "hashing",
            "reading_gguf",
            "converting_tokenizer",
            "converting_weights",
            "saving",
            "loading_tokenizer",
            "loading_weights",
            "done",
        ]
        fractions = [state.fraction for state in seen]
        assert fractions == sorted(fractions)
        weights = [s for s in seen if s.stage == "converting_weights"]
        assert len(weights) > 2, "the dequantized tensors move the weights stage"
        saving = next(s for s in seen if s.stage == "saving")
        assert weights[-1].fraction == pytest.approx(saving.fraction), "every tensor counted"
        assert seen[-1].percent == 100 and all(s.percent < 100 for s in seen[:-1])

        again: list[LoadingState] = []
        load_model(entry, settings, progress=LoadProgress(on_change=again.append))  # type: ignore[arg-type]
        assert list(dict.fromkeys(state.stage for state in again)) == [
            "hashing",
            "loading_tokenizer",
            "loading_weights",
            "done",
        ]

    def test_a_conversion_waits_for_the_one_in_progress(self, tmp_path: Path) -> None:
        """While another process holds the cache directory's conversion lock, a conversion
        waits (stage `waiting_for_conversion`) and writes nothing; once it is released the
        conversion runs."""
        gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
        cache_dir = tmp_path / "cache"
        waiting = threading.Event()

        def on_change(state: LoadingState) -> None:
            if state.stage == "waiting_for_conversion":
                waiting.set()

        with ThreadPoolExecutor(max_workers=1) as pool:
            with conversion_lock_held(cache_dir):
                converting = pool.submit(
                    ensure_converted,
                    gguf_path,
                    cache_dir,
                    torch.float32,
                    show_progress=False,
                    progress=LoadProgress(on_change=on_change),
                )
                assert waiting.wait(WAIT_TIMEOUT_S), "the conversion did not wait for the lock"
                assert not converting.done()
                assert list(cache_dir.iterdir()) == []
            converted = converting.result(WAIT_TIMEOUT_S)
        assert is_converted(converted)


class TestGgufThroughEngine:
    async def test_engine_serves_gguf_file_entry(self, tmp_path: Path) -> None:
        """A catalog entry with a gguf_file source loads through conversion and streams."""
        gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
        catalog_path = tmp_path / "catalog.toml"
        catalog_path.write_text(
            f"""
[[models]]
id = "tiny-gguf"
source = {{ kind = "gguf_file", path = "{gguf_path}" }}
dtype = "float32"
device = "cpu"
context_limit_tokens = 256
max_new_tokens_cap = 16
price = {{ per_message_credits = 0, prompt_credits_per_1k_tokens = 0, \
completion_credits_per_1k_tokens = 0 }}
""",
            encoding="utf-8",
        )
        settings = InferenceSettings(cache_dir=tmp_path / "cache")
        engine = Engine(load_catalog(catalog_path, environ={}), settings)
        try:
            _, finished = await collect(engine.stream(request("tiny-gguf", "hello", 6)))
            assert finished.model_id_answered == "tiny-gguf"
            assert 1 <= finished.completion_tokens <= 6
            loaded = engine.loaded_model("tiny-gguf")
            assert loaded is not None and loaded.weights_dir.parent == tmp_path / "cache"
        finally:
            await engine.close()
