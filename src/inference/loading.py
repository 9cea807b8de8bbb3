"""Loading one catalog entry into memory: resolve its weights, convert a GGUF once, apply the
requested dtype, device and bitsandbytes quantization, and find the tokens that end a turn.

Failures are translated once, here: out-of-memory into OutOfMemory (after freeing what the
attempt took), anything else into ModelLoadFailed."""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from inference.batching import BatchedModel
from inference.catalog import CatalogEntry
from inference.errors import InferenceError, ModelLoadFailed, OutOfMemory
from inference.fusing import fuse_norms
from inference.gguf_cache import ensure_converted
from inference.packing import can_pack, pack_linears
from inference.progress import CONVERSION_STAGES, LOAD_STAGES, LoadProgress
from inference.screening import int8_screen_pays, screen_output_layer
from inference.settings import InferenceSettings
from inference.sources import resolve_weights
from inference.text import END_OF_TURN, TokenizerAdapter
from inference.threads import ThreadChoice, usable_cores

log = structlog.get_logger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class LoadedModel:
    """A model ready to generate, with what the scheduler needs to know about it."""

    entry: CatalogEntry
    model: Any
    tokenizer: TokenizerAdapter
    device: torch.device
    dtype: torch.dtype
    stop_token_ids: frozenset[int]
    memory_bytes: int
    load_s: float
    weights_dir: Path
    runner: BatchedModel  # the model as the scheduler's batch phases run it


def pick_device(entry: CatalogEntry) -> torch.device:
    if entry.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(entry.device)


def pick_dtype(entry: CatalogEntry, device: torch.device) -> torch.dtype:
    if entry.dtype == "auto":
        # bf16 halves the weight reads that bound decode speed, on CPU as on GPU.
        return torch.bfloat16
    return _DTYPES[entry.dtype]


_CPU_ALLOCATION_FAILURES = ("can't allocate memory", "not enough memory", "out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError, but a failed CPU allocation in torch is a plain
    RuntimeError from DefaultCPUAllocator, recognisable only by its message."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(t in message for t in _CPU_ALLOCATION_FAILURES)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def default_torch_threads() -> int:
    """One intra-op thread per core this process may run on, less one (at least one): the
    count a model starts with; its scheduler's `ThreadGovernor` then moves between that and
    one per core as the steps' times say (`threads.py`)."""
    return ThreadChoice.for_cores(usable_cores()).fewer


def prepare_weights(
    entry: CatalogEntry,
    settings: InferenceSettings,
    show_progress: bool = False,
    progress: LoadProgress | None = None,
) -> Path:
    """The directory `load_model` loads from: the entry's weights, a GGUF converted first
    (once, cached; minutes for the bundled model on 2 cores). Blocking. `progress` is planned
    here for the preparation and the load that follows it."""
    _library_progress_bars(show_progress)
    if progress is None:
        progress = LoadProgress()
    weights = resolve_weights(entry, settings)
    if weights.suffix == ".gguf":
        progress.plan((*CONVERSION_STAGES, *LOAD_STAGES))
        weights = ensure_converted(
            weights, settings.cache_dir, show_progress=show_progress, progress=progress
        )
    else:
        progress.plan(LOAD_STAGES)
    return weights


def _library_progress_bars(show_progress: bool) -> None:
    """transformers' own tqdm bars ("Loading weights", "Converting and de-quantizing GGUF
    tensors") show only with `show_progress` on a terminal: in a log file or pipe they are
    noise between the JSON lines, and `serve` shows one bar of its own for the whole load."""
    from transformers.utils import logging as transformers_logging

    if show_progress and sys.stderr.isatty():
        transformers_logging.enable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers
    else:
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers


def load_model(
    entry: CatalogEntry,
    settings: InferenceSettings,
    show_progress: bool = False,
    progress: LoadProgress | None = None,
) -> LoadedModel:
    """Blocking; run it off the event loop. Raises ModelUnavailable, ModelLoadFailed or
    OutOfMemory. `progress` follows the preparation (a GGUF hashed and converted) and the
    load; it is finished when the model is loaded."""
    started = time.perf_counter()
    if progress is None:
        progress = LoadProgress()
    try:
        return _load(entry, settings, show_progress, started, progress)
    except InferenceError:
        raise
    except (Exception, MemoryError) as exc:  # every failure of third-party loading code
        free_memory()
        out_of_memory = is_out_of_memory(exc)
        log.error(
            "model_loading_failed", model=entry.id, error=repr(exc), out_of_memory=out_of_memory
        )
        if out_of_memory:
            raise OutOfMemory(entry.id, "loading") from exc
        raise ModelLoadFailed(entry.id, f"{type(exc).__name__}: {exc}") from exc


def _load(
    entry: CatalogEntry,
    settings: InferenceSettings,
    show_progress: bool,
    started: float,
    progress: LoadProgress,
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantization_class: Any = BitsAndBytesConfig  # untyped constructor

    torch.set_num_threads(settings.torch_threads or default_torch_threads())
    device = pick_device(entry)
    dtype = pick_dtype(entry, device)
    weights = prepare_weights(entry, settings, show_progress, progress)
    quantization_config = None
    if entry.quantization == "bnb-int4":
        quantization_config = quantization_class(load_in_4bit=True, bnb_4bit_compute_dtype=dtype)
    elif entry.quantization == "bnb-int8":
        quantization_config = quantization_class(load_in_8bit=True)
    log.info("model_loading", model=entry.id, weights=str(weights), device=str(device))
    progress.begin("loading_tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(weights)
    progress.begin("loading_weights")
    model: Any = AutoModelForCausalLM.from_pretrained(
        weights,
        dtype=dtype,
        device_map={"": device},
        quantization_config=quantization_config,
    )
    model.eval()
    memory_bytes = int(model.get_memory_footprint())
    fuse_norms(model)
    unpacked = can_pack(device, dtype, quantization_config is not None)
    if not settings.pack_weights:
        unpacked = "LEDGERCHAT_INFERENCE_PACK_WEIGHTS is off"
    if unpacked is None and settings.screen_output_layer and int8_screen_pays():
        memory_bytes += screen_output_layer(model)  # before packing: its exact layer is packed
    if unpacked is None:
        memory_bytes += pack_linears(model, dtype)
    else:
        log.info("weights_not_packed", model=entry.id, reason=unpacked)
    runner = BatchedModel(model, device, dtype)  # refuses attention it cannot batch
    adapter = TokenizerAdapter(tokenizer)
    stop_ids = set(_eos_ids(model.generation_config.eos_token_id))
    stop_ids |= set(_eos_ids(tokenizer.eos_token_id))
    end_of_turn = adapter.token_id(END_OF_TURN)
    if end_of_turn is not None:
        stop_ids.add(end_of_turn)
    load_s = time.perf_counter() - started
    log.info("model_loaded", model=entry.id, load_s=round(load_s, 2), memory_bytes=memory_bytes)
    progress.finish()
    return LoadedModel(
        entry=entry,
        model=model,
        tokenizer=adapter,
        device=device,
        dtype=dtype,
        stop_token_ids=frozenset(stop_ids),
        memory_bytes=memory_bytes,
        load_s=load_s,
        weights_dir=weights,
        runner=runner,
    )


def _eos_ids(value: object) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [item for item in value if isinstance(item, int)]
    return []
