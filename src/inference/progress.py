"""How far one model's preparation and load has come, for the people waiting on it: the loading
thread reports stages (hashing a GGUF, converting it, loading the weights) and, within some of
them, bytes done; /ready, /api/models, the page and `serve`'s terminal read a fraction.

Each stage has a share of the whole: its expected seconds, measured on the bundled Gemma 3 270M
(2 cores, under load; see `STAGE_SECONDS`). A stage that reports its own progress (bytes
hashed, tensor bytes dequantized) moves within its share. When the plan changes (a GGUF turns
out to be converted already), the fraction reached so far is kept and the stages left share
the rest, so the fraction never goes back. It reaches 1 only when the load is done."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Expected seconds of each stage: a first start of the bundled 270M through `python3 dev.py
# serve` on this machine kind (2 cores, loaded by other work): reading the GGUF 21 s, the
# tokenizer 9 s, the weights 32 s, saving 2 s, loading the converted copy 5-6 s; a second start
# spent ~9 s on the tokenizer and ~5 s on the weights. Only their ratios matter.
STAGE_SECONDS: dict[str, float] = {
    "hashing": 1.0,
    # Another process converting the same cache directory: no share, it cannot be estimated.
    "waiting_for_conversion": 0.0,
    "reading_gguf": 21.0,
    "converting_tokenizer": 9.0,
    "converting_weights": 32.0,
    "saving": 2.0,
    "loading_tokenizer": 4.0,
    "loading_weights": 3.0,
}
STAGE_LABELS: dict[str, str] = {
    "starting": "starting",
    "hashing": "checking the weights file",
    "waiting_for_conversion": "waiting for another conversion of this cache",
    "reading_gguf": "converting: reading the GGUF",
    "converting_tokenizer": "converting: tokenizer",
    "converting_weights": "converting: weights",
    "saving": "converting: saving",
    "loading_tokenizer": "loading the tokenizer",
    "loading_weights": "loading the weights",
    "done": "loaded",
}
CONVERSION_STAGES = (
    "hashing",
    "waiting_for_conversion",
    "reading_gguf",
    "converting_tokenizer",
    "converting_weights",
    "saving",
)
LOAD_STAGES = ("loading_tokenizer", "loading_weights")
DONE = "done"


@dataclass(frozen=True)
class LoadingState:
    """A snapshot: `fraction` of the whole in [0, 1], the stage now, and its label."""

    fraction: float
    stage: str

    @property
    def percent(self) -> int:
        """Whole percent done; 100 only once the load is finished (the end of its last stage
        is still 99: the model is not ready until `finish()`)."""
        if self.stage == DONE:
            return 100
        return min(99, math.floor(self.fraction * 100))

    @property
    def label(self) -> str:
        return STAGE_LABELS.get(self.stage, self.stage.replace("_", " "))


class LoadProgress:
    """Written by the loading thread, read by anyone (a lock guards both). `on_change`, when
    given, is called (in the writer's thread) with each new snapshot."""

    def __init__(self, on_change: Callable[[LoadingState], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._on_change = on_change
        self._fraction = 0.0
        self._stage = "starting"
        # The plan: stage -> (start, share) as fractions of the whole, in order.
        self._spans: dict[str, tuple[float, float]] = {}

    def state(self) -> LoadingState:
        with self._lock:
            return LoadingState(self._fraction, self._stage)

    def plan(self, stages: Sequence[str]) -> None:
        """From now on the work left is `stages` (in order): they share what the fraction has
        not reached yet, in proportion to their expected seconds."""
        with self._lock:
            self._plan(stages)

    def skip(self, stages: Sequence[str]) -> None:
        """The planned stages after the current one, except `stages`, share the rest."""
        with self._lock:
            order = list(self._spans)
            after = order[order.index(self._stage) + 1 :] if self._stage in order else order
            self._plan([stage for stage in after if stage not in stages])

    def _plan(self, stages: Sequence[str]) -> None:
        left = 1.0 - self._fraction
        total_s = sum(STAGE_SECONDS.get(stage, 0.0) for stage in stages)
        start = self._fraction
        spans: dict[str, tuple[float, float]] = {}
        for stage in stages:
            share = left * STAGE_SECONDS.get(stage, 0.0) / total_s if total_s else 0.0
            spans[stage] = (start, share)
            start += share
        self._spans = spans

    def begin(self, stage: str) -> None:
        """Stage `stage` starts: the fraction moves to its start (never back)."""
        with self._lock:
            span = self._spans.get(stage)
            if span is not None:
                self._fraction = max(self._fraction, span[0])
            self._stage = stage
            snapshot = LoadingState(self._fraction, self._stage)
        self._notify(snapshot)

    def advance(self, done: float, total: float) -> None:
        """`done` of `total` units (bytes) of the current stage are done."""
        if total <= 0:
            return
        with self._lock:
            span = self._spans.get(self._stage)
            if span is None:
                return
            start, share = span
            reached = start + share * min(1.0, max(0.0, done / total))
            if reached <= self._fraction:
                return
            self._fraction = reached
            snapshot = LoadingState(self._fraction, self._stage)
        self._notify(snapshot)

    def finish(self) -> None:
        with self._lock:
            self._fraction = 1.0
            self._stage = DONE
            snapshot = LoadingState(self._fraction, self._stage)
        self._notify(snapshot)

    def _notify(self, snapshot: LoadingState) -> None:
        if self._on_change is not None:
            self._on_change(snapshot)
