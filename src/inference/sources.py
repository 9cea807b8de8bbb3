"""Finding a catalog entry's weights on this machine, without touching the network.

`check_availability` is cheap (file checks only) and says why a model is missing and how to
provide it; `resolve_weights` returns the path to load, assembling a packaged GGUF if needed."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from inference.catalog import CatalogEntry
from inference.errors import ModelUnavailable
from inference.settings import InferenceSettings


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str | None = None
    how_to_provide: str | None = None


def check_availability(entry: CatalogEntry, settings: InferenceSettings) -> Availability:
    source = entry.source
    if source.kind == "gguf_package":
        assert source.package is not None
        if importlib.util.find_spec(source.package) is None:
            return Availability(
                False,
                f"Python package {source.package} is not installed",
                f"pip install {source.package.replace('_', '-')}",
            )
        return Availability(True)
    if source.kind == "gguf_file":
        assert source.path is not None
        if not source.path.is_file():
            return Availability(
                False,
                f"GGUF file {source.path} does not exist",
                f"copy the GGUF file to {source.path} or point the catalog entry at it",
            )
        return Availability(True)
    if source.kind == "hf_dir":
        assert source.path is not None
        problem = _hf_dir_problem(source.path)
        if problem is not None:
            return Availability(
                False,
                problem,
                f"put a Hugging Face model directory (config.json, tokenizer, *.safetensors) "
                f"at {source.path}",
            )
        return Availability(True)
    if _find_hf_repo(entry, settings) is not None:
        return Availability(True)
    return Availability(
        False,
        f"{source.repo_id} is neither in the local Hugging Face cache nor in "
        f"{_models_dir_text(entry, settings)}",
        f"run `ledgerchat models pull {entry.id}` on a machine that can reach huggingface.co "
        f"(accept the Gemma licence there and set HF_TOKEN), or copy a downloaded snapshot to "
        f"{_models_dir_text(entry, settings)}",
    )


def resolve_weights(entry: CatalogEntry, settings: InferenceSettings) -> Path:
    """A Hugging Face directory or a GGUF file holding the entry's weights."""
    availability = check_availability(entry, settings)
    if not availability.available:
        raise ModelUnavailable(
            entry.id, availability.reason or "unavailable", availability.how_to_provide
        )
    source = entry.source
    if source.kind == "gguf_package":
        assert source.package is not None
        module = importlib.import_module(source.package)
        # The package writes the GGUF from its chunks once and checks its sha256.
        return Path(module.assemble())
    if source.kind in ("gguf_file", "hf_dir"):
        assert source.path is not None
        return source.path
    found = _find_hf_repo(entry, settings)
    assert found is not None
    return found


def _hf_dir_problem(path: Path) -> str | None:
    if not path.is_dir():
        return f"directory {path} does not exist"
    if not (path / "config.json").is_file():
        return f"{path} has no config.json"
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        return f"{path} has no weight files (*.safetensors)"
    return None


def _models_dir_text(entry: CatalogEntry, settings: InferenceSettings) -> str:
    if settings.models_dir is None:
        return "LEDGERCHAT_INFERENCE_MODELS_DIR/<id> (not set)"
    return str(settings.models_dir / entry.id)


def _find_hf_repo(entry: CatalogEntry, settings: InferenceSettings) -> Path | None:
    if settings.models_dir is not None:
        candidate = settings.models_dir / entry.id
        if _hf_dir_problem(candidate) is None:
            return candidate
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    assert entry.source.repo_id is not None
    try:
        snapshot = snapshot_download(
            entry.source.repo_id,
            revision=entry.source.revision,
            cache_dir=settings.hf_cache_dir,
            local_files_only=True,
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None
    path = Path(snapshot)
    return path if _hf_dir_problem(path) is None else None


def pull(entry: CatalogEntry, settings: InferenceSettings) -> Path:
    """Download an hf_repo entry into the Hugging Face cache (explicit operator action only)."""
    if entry.source.kind != "hf_repo":
        raise ModelUnavailable(
            entry.id,
            f"its source is a {entry.source.describe()}; only hf_repo sources can be pulled",
        )
    from huggingface_hub import snapshot_download

    assert entry.source.repo_id is not None
    try:
        snapshot = snapshot_download(
            entry.source.repo_id,
            revision=entry.source.revision,
            cache_dir=settings.hf_cache_dir,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"],
        )
    except Exception as exc:  # network, auth and licence errors all end the pull the same way
        raise ModelUnavailable(
            entry.id,
            f"downloading {entry.source.repo_id} failed: {type(exc).__name__}: {exc}",
            "check the network, accept the Gemma licence on huggingface.co and set HF_TOKEN",
        ) from exc
    return Path(snapshot)
