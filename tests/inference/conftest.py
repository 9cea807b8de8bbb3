"""Fixtures for the inference tests: a tiny random Gemma 3 saved once per session, catalogs
that point at it (working, broken, missing, 4-bit), and engines closed after each test."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from inference import Catalog, Engine, InferenceSettings, load_catalog
from tests.inference.tiny_model import save_tiny_gemma

TINY = "tiny"
TINY_BROKEN = "tiny-broken"
TINY_MISSING = "tiny-missing"
TINY_INT4 = "tiny-int4"
# 4-bit on CPU needs layer output sizes divisible by 32; this one's are not, so every forward
# fails inside bitsandbytes: a real generation failure for the error-path tests.
TINY_CONTEXT_LIMIT = 512
TINY_CAP = 400


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from threads, and on a busy 2-core machine a second
    OpenMP thread made each forward ~30x slower (measured: 0.38 s vs 0.01 s). Restored after
    each test because torch's thread count is process-wide."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="session")
def broken_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Looks like a model directory, but its weights file is garbage."""
    directory = tmp_path_factory.mktemp("broken-gemma")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, directory / name)
    (directory / "model.safetensors").write_bytes(b"this is not a safetensors file")
    return directory


def catalog_toml(tiny_dir: Path, broken_dir: Path, missing_dir: Path) -> str:
    def entry(model_id: str, path: Path, extra: str = "") -> str:
        return f"""
[[models]]
id = "{model_id}"
display_name = "{model_id} test model"
source = {{ kind = "hf_dir", path = "{path}" }}
dtype = "float32"
device = "cpu"
context_limit_tokens = {TINY_CONTEXT_LIMIT}
max_new_tokens_cap = {TINY_CAP}
price = {{ per_message_credits = 1, prompt_credits_per_1k_tokens = 2, \
completion_credits_per_1k_tokens = 3 }}
{extra}
"""

    return (
        entry(TINY, tiny_dir)
        + entry(TINY_BROKEN, broken_dir, f'fallback_model_id = "{TINY}"')
        + entry(TINY_MISSING, missing_dir)
        + entry(TINY_INT4, tiny_dir, 'quantization = "bnb-int4"')
    )


@pytest.fixture
def tiny_catalog_path(tiny_model_dir: Path, broken_model_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    text = catalog_toml(tiny_model_dir, broken_model_dir, tmp_path / "nowhere")
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tiny_catalog(tiny_catalog_path: Path) -> Catalog:
    return load_catalog(tiny_catalog_path, environ={})


@pytest.fixture
def tiny_settings(tmp_path: Path) -> InferenceSettings:
    return InferenceSettings(cache_dir=tmp_path / "cache", queue_limit=4, max_batch_size=4)


EngineFactory = Callable[..., Engine]


@pytest.fixture
async def make_engine(
    tiny_catalog: Catalog, tiny_settings: InferenceSettings
) -> AsyncIterator[EngineFactory]:
    """make_engine(**settings_overrides) -> Engine over the tiny catalog; closed afterwards."""
    engines: list[Engine] = []

    def factory(**overrides: object) -> Engine:
        settings = InferenceSettings(
            **{**tiny_settings.__dict__, **overrides}  # type: ignore[arg-type]
        )
        engine = Engine(tiny_catalog, settings)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.close()


@pytest.fixture
def no_catalog_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keeps the developer's LEDGERCHAT_* variables out of catalog and settings tests."""
    import os

    for name in list(os.environ):
        if name.startswith("LEDGERCHAT_"):
            monkeypatch.delenv(name)
    yield
