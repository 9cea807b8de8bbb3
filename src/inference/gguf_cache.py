"""Converting a GGUF file once into a Hugging Face directory (dequantized safetensors plus the
tokenizer) kept in the cache directory under the GGUF's sha256, so later starts load the
converted copy in seconds instead of parsing the GGUF again (FACTS.md: ~45 s vs ~5 s).

A changed GGUF has a different hash and is converted again. A conversion is written to a
temporary directory and renamed into place, so a crash never leaves a half-written cache. One
conversion at a time per cache directory, across processes (an advisory lock on the directory,
released by the system if its holder dies): a second start waits for the first's result instead
of converting the same file again beside it. Progress (bytes hashed, stages, tensor bytes
dequantized) goes to a `LoadProgress` when one is given."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
import torch
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

from inference.progress import CONVERSION_STAGES, LoadProgress

log = structlog.get_logger(__name__)

_HASH_BLOCK_BYTES = 8 * 1024 * 1024
_MARKER = "ledgerchat-conversion.json"
# Bump when the conversion recipe changes, so old cache entries are not reused.
CONVERSION_FORMAT = 1
# How long a conversion waits for another process's conversion in the same cache directory
# (the bundled 270M takes minutes on 2 cores), checking every CONVERSION_LOCK_POLL_S.
CONVERSION_LOCK_WAIT_S = 1800.0
CONVERSION_LOCK_POLL_S = 0.5


def sha256_of(path: Path, show_progress: bool = True, progress: LoadProgress | None = None) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    done = 0
    with (
        path.open("rb") as file,
        tqdm(
            total=size, unit="B", unit_scale=True, desc=f"hashing {path.name}",
            disable=not show_progress, leave=False,
        ) as bar,
    ):  # fmt: skip
        while block := file.read(_HASH_BLOCK_BYTES):
            digest.update(block)
            bar.update(len(block))
            done += len(block)
            if progress is not None:
                progress.advance(done, size)
    return digest.hexdigest()


class _Stages:
    """The conversion's three stages: a tqdm bar on a terminal (`show_progress`), else one
    log line per stage, so a log file or a test's output still shows where a slow start is."""

    _NAMES = ("tokenizer", "weights", "saving")

    def __init__(self, name: str, show_progress: bool) -> None:
        self._name = name
        self._show_progress = show_progress
        self._bar = tqdm(
            total=len(self._NAMES), desc=f"converting {name}", disable=not show_progress
        )
        self._current: str | None = None

    def __enter__(self) -> _Stages:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()

    def begin(self, stage: str) -> None:
        """Finish the current stage (if any) and start `stage` (`done` starts none)."""
        if self._current is not None:
            self._bar.update(1)
        self._current = stage if stage in self._NAMES else None
        if self._current is None:
            return
        step = self._NAMES.index(stage) + 1
        self._bar.set_postfix_str(stage)
        if not self._show_progress:
            log.info(
                "gguf_conversion_stage",
                gguf=self._name,
                stage=stage,
                step=f"{step}/{len(self._NAMES)}",
            )


_PARSE_LOCK = threading.Lock()


@contextmanager
def _gguf_parsed_once(progress: LoadProgress) -> Iterator[None]:
    """Within this block `gguf.GGUFReader` parses each path once and hands back that parse.

    transformers builds a new GGUFReader for the tokenizer's config, for the model's config and
    for the model's tensors, and each walks the 262k-entry vocabulary arrays in Python: under
    load that was ~2/3 of a 7-minute conversion. A reader is a read-only view of a memory map,
    so sharing one changes nothing in the output (the test compares it bitwise). The lock keeps
    two conversions in one process from seeing each other's patch half-undone.

    For `progress`: the end of the parse starts the `converting_tokenizer` stage, and
    `gguf.dequantize` (which transformers looks up on the module at each load) counts the
    tensor bytes dequantized out of the file's total."""
    import gguf

    original: Any = gguf.GGUFReader
    original_dequantize: Any = gguf.dequantize
    readers: dict[tuple[str, str], Any] = {}
    tensor_bytes = {"total": 0, "done": 0}

    def parse_once(path: Any, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
            tensor_bytes["total"] += sum(int(t.n_bytes) for t in readers[key].tensors)
            progress.begin("converting_tokenizer")
        return readers[key]

    def counted_dequantize(data: Any, tensor_type: Any) -> Any:
        weights = original_dequantize(data, tensor_type)
        tensor_bytes["done"] += int(data.nbytes)
        progress.advance(tensor_bytes["done"], tensor_bytes["total"])
        return weights

    with _PARSE_LOCK:
        # setattr: the module attributes are a class and a function; stand-ins replace them.
        setattr(gguf, "GGUFReader", parse_once)  # noqa: B010
        setattr(gguf, "dequantize", counted_dequantize)  # noqa: B010
        try:
            yield
        finally:
            setattr(gguf, "GGUFReader", original)  # noqa: B010
            setattr(gguf, "dequantize", original_dequantize)  # noqa: B010
            readers.clear()


@contextmanager
def _conversion_lock(cache_dir: Path, progress: LoadProgress) -> Iterator[None]:
    """Hold the cache directory's conversion lock (an advisory `flock` on the directory, so a
    holder that dies releases it). While another process holds it, wait (stage
    `waiting_for_conversion`), at most CONVERSION_LOCK_WAIT_S."""
    descriptor = os.open(cache_dir, os.O_RDONLY)
    try:
        if not _try_lock(descriptor):
            progress.begin("waiting_for_conversion")
            log.info("gguf_conversion_waiting", directory=str(cache_dir))
            deadline = time.monotonic() + CONVERSION_LOCK_WAIT_S
            while not _try_lock(descriptor):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another process has been converting a model in {cache_dir} for over "
                        f"{CONVERSION_LOCK_WAIT_S:.0f} s"
                    )
                time.sleep(CONVERSION_LOCK_POLL_S)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# sha256 by (path, size, mtime): a start prepares the weights, then loads them, and hashing the
# 253 MB GGUF once is enough for both.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def converted_dir_for(
    gguf_path: Path,
    cache_dir: Path,
    show_progress: bool = True,
    progress: LoadProgress | None = None,
) -> Path:
    """Where the conversion of this exact file lives (whether or not it exists yet)."""
    info = gguf_path.stat()
    key = (str(gguf_path.resolve()), info.st_size, info.st_mtime_ns)
    if progress is not None:
        progress.begin("hashing")
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_of(gguf_path, show_progress, progress)
    return cache_dir / f"gguf-{_DIGESTS[key][:32]}-v{CONVERSION_FORMAT}"


def is_converted(target: Path) -> bool:
    return (target / _MARKER).is_file()


def ensure_converted(
    gguf_path: Path,
    cache_dir: Path,
    dtype: torch.dtype = torch.bfloat16,
    show_progress: bool = True,
    progress: LoadProgress | None = None,
) -> Path:
    """The converted directory for `gguf_path`, converting it first if needed (or waiting for
    another process converting it). `progress`, planned by the caller with
    `CONVERSION_STAGES`, is told each stage; stages a reuse skips are dropped from its plan."""
    if progress is None:
        progress = LoadProgress()
    target = converted_dir_for(gguf_path, cache_dir, show_progress, progress)
    if is_converted(target):
        log.info("gguf_conversion_reused", gguf=str(gguf_path), directory=str(target))
        progress.skip(CONVERSION_STAGES)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(cache_dir, progress):
        if is_converted(target):  # the process we waited for converted this very file
            log.info("gguf_conversion_reused", gguf=str(gguf_path), directory=str(target))
            progress.skip(CONVERSION_STAGES)
            return target
        _convert(gguf_path, cache_dir, target, dtype, show_progress, progress)
    return target


def _convert(
    gguf_path: Path,
    cache_dir: Path,
    target: Path,
    dtype: torch.dtype,
    show_progress: bool,
    progress: LoadProgress,
) -> None:
    log.info("gguf_conversion_started", gguf=str(gguf_path), directory=str(target))
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=cache_dir))
    try:
        with _Stages(gguf_path.name, show_progress) as stages, _gguf_parsed_once(progress):
            stages.begin("tokenizer")
            # The GGUF is parsed inside this call; its end starts `converting_tokenizer`.
            progress.begin("reading_gguf")
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            stages.begin("weights")
            progress.begin("converting_weights")
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent,
                gguf_file=gguf_path.name,
                quantization_config=GgufConfig(dequantize=True),
                dtype=dtype,
            )
            stages.begin("saving")
            progress.begin("saving")
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            del model
            stages.begin("done")
        marker = {"source": str(gguf_path), "dtype": str(dtype), "format": CONVERSION_FORMAT}
        (staging / _MARKER).write_text(json.dumps(marker), encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same conversion first; keep its copy.
            if not is_converted(target):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("gguf_conversion_finished", gguf=str(gguf_path), directory=str(target))
