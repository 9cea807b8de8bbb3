"""The default model at start: its weights prepared (a GGUF converted once, with a progress bar
when stderr is a terminal) before the port opens, then loaded in the background; `serve`
prints its ready line from the outcome."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time

from inference.loading import prepare_weights
from inference.router import InferenceRouter
from web.logging import get_logger

log = get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class DefaultModelOutcome:
    """How the default model's load at start ended: `load_s` counts from the start of its
    preparation (a GGUF conversion included) to loaded; `error` is None when it loaded."""

    model_id: str
    load_s: float
    error: str | None = None


async def prepare_default_weights(engine: InferenceRouter, model_id: str) -> None:
    """Resolve (and convert, once) the default model's weights off the event loop, with a
    progress bar when stderr is a terminal. A failure is left for the load to report."""
    if model_id not in engine.catalog or engine.is_remote(model_id):
        return
    entry = engine.catalog.get(model_id)
    try:
        await asyncio.to_thread(
            prepare_weights, entry, engine.settings, show_progress=sys.stderr.isatty()
        )
    except Exception as exc:  # reported by the load that follows, /ready and /api/models
        log.warning("default_model_not_prepared", model=model_id, error=str(exc))


async def load_default_model(
    engine: InferenceRouter, model_id: str, preparing_since: float
) -> DefaultModelOutcome:
    """Load the default model in the background (a remote one: check that its upstream
    answers); /ready reports ready once it is."""
    try:
        await engine.load(model_id)
    except Exception as exc:  # reported by /ready and /api/models; the service still runs
        log.error("default_model_not_loaded", model=model_id, error=str(exc))
        return DefaultModelOutcome(model_id, time.perf_counter() - preparing_since, str(exc))
    load_s = time.perf_counter() - preparing_since
    log.info("default_model_loaded", model=model_id, load_s=round(load_s, 2))
    return DefaultModelOutcome(model_id, load_s)
