"""The default model at start, in the background while the port is already open: its weights
prepared (a GGUF hashed and, on a first start, converted) and loaded, then the other models
marked load_at_start; how far it has come shown on the terminal (a tqdm bar when stderr is a
terminal, one log line per stage otherwise). `serve` prints its ready line from the outcome."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time

from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information
from tqdm.contrib.logging import (  # type: ignore[import-untyped]  # tqdm ships no type information
    logging_redirect_tqdm,
)

from inference.progress import LoadingState
from inference.router import InferenceRouter
from web.logging import get_logger

log = get_logger(__name__)
# How often the terminal's view of the load reads the progress (it is cheap: a locked read).
PROGRESS_POLL_S = 0.5
# The bar's terminal size where the terminal reports none (a fresh pseudo-terminal says 0x0,
# and tqdm then draws nothing).
FALLBACK_TERMINAL_SIZE = (100, 24)


@dataclasses.dataclass(frozen=True)
class DefaultModelOutcome:
    """How the default model's load at start ended: `load_s` counts from the start of its
    preparation (a GGUF conversion included) to loaded; `error` is None when it loaded."""

    model_id: str
    load_s: float
    error: str | None = None


async def load_default_model(
    engine: InferenceRouter, model_id: str, preparing_since: float
) -> DefaultModelOutcome:
    """Prepare and load the default model (a remote one: check that its upstream answers);
    /ready reports ready once it is."""
    try:
        await engine.load(model_id)
    except Exception as exc:  # reported by /ready and /api/models; the service still runs
        log.error("default_model_not_loaded", model=model_id, error=str(exc))
        return DefaultModelOutcome(model_id, time.perf_counter() - preparing_since, str(exc))
    load_s = time.perf_counter() - preparing_since
    log.info("default_model_loaded", model=model_id, load_s=round(load_s, 2))
    return DefaultModelOutcome(model_id, load_s)


async def start_models(
    engine: InferenceRouter, default_model: asyncio.Task[DefaultModelOutcome]
) -> None:
    """Once the default model's load has ended: the other models marked load_at_start (each
    failure is logged by the engine; the service still runs)."""
    await asyncio.wait([default_model])
    await engine.start()


async def show_load_progress(
    engine: InferenceRouter,
    model_id: str,
    outcome: asyncio.Future[DefaultModelOutcome | None],
    terminal: bool,
) -> None:
    """Until `outcome` is known: on a terminal one tqdm bar (percent and stage) with the log
    lines printed above it, otherwise a `default_model_loading` log line per stage."""
    if not terminal:
        await _log_stages(engine, model_id, outcome)
        return
    with (
        logging_redirect_tqdm(),
        tqdm(
            total=100,
            desc=f"loading {model_id}",
            bar_format=_BAR_FORMAT,
            **_terminal_size(),
        ) as bar,
    ):
        while not outcome.done():
            state = engine.loading_state(model_id)
            if state is not None:
                bar.n = state.percent
                bar.set_postfix_str(state.label, refresh=False)
                bar.refresh()
            await asyncio.wait([outcome], timeout=PROGRESS_POLL_S)
        if not outcome.cancelled() and outcome.exception() is None:
            result = outcome.result()
            if result is not None and result.error is None:
                bar.n = 100
                bar.set_postfix_str("loaded", refresh=False)
                bar.refresh()


_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}"


def _terminal_size() -> dict[str, int]:
    """Nothing (tqdm follows the terminal) unless stderr's terminal reports no size."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        size = os.terminal_size((0, 0))
    if size.columns > 0 and size.lines > 0:
        return {}
    columns, lines = FALLBACK_TERMINAL_SIZE
    return {"ncols": columns, "nrows": lines}


async def _log_stages(
    engine: InferenceRouter, model_id: str, outcome: asyncio.Future[DefaultModelOutcome | None]
) -> None:
    last: LoadingState | None = None
    while not outcome.done():
        state = engine.loading_state(model_id)
        if state is not None and (last is None or state.stage != last.stage):
            log.info(
                "default_model_loading",
                model=model_id,
                stage=state.stage,
                percent=state.percent,
            )
            last = state
        await asyncio.wait([outcome], timeout=PROGRESS_POLL_S)
