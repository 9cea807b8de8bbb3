"""How many torch threads each decode step runs with (`ThreadGovernor`), chosen from the
times of recent steps.

On a machine with few cores the best count changes with what else runs: every torch op
splits its work across the threads and waits for the slowest, so two threads on 2 cores made
a 1-row step of the 270M ~1.5x faster when the other core was free and 4-10x slower when
another process held it (docs/benchmarks.md). No fixed count is right for both, so the
governor keeps a current count (fewer or more threads), tries the other one for a few steps
now and then ("a probe"), and switches when the probe's steps were clearly faster than the
steps just before it at the same batch size. Probes grow rarer while they lose (a probe ends
at its first clearly slower step, so each costs one slow step under contention), and steps
that became much slower than when the count was last chosen trigger one at once. Steps too
short for threads to matter (a tiny model) are never probed: the count stays at the fewer.

The governor only decides; it never reads a clock, so its rule is tested by feeding it times."""

from __future__ import annotations

import os
import statistics
from collections import deque
from dataclasses import dataclass

# Steps of the current count compared with a probe's steps (medians of this many).
COMPARED_STEPS = 3
# A probe's first step may include waking the thread pool: it runs, and is not compared.
PROBE_STEPS = COMPARED_STEPS + 1
FIRST_PROBE_AFTER_STEPS = 16
MAX_PROBE_INTERVAL_STEPS = 512
# The other count must be at least this much faster (its median time at most this fraction).
SWITCH_FRACTION = 0.92
# A probe step this much slower than the steps before it ends the probe at once: under
# contention a step with more threads can take 5-10x longer, and one such step is enough.
ABORT_FACTOR = 2.0
# Steps this much slower than when the count was chosen (same batch size) call for a probe.
SLOWDOWN_FACTOR = 1.5
# Below this a step is mostly Python and op dispatch, which more threads cannot speed up.
MIN_PROBED_STEP_S = 0.030
# Models with fewer bytes of weights keep the fewer threads (the 270M has 536 MB in bf16).
MIN_GOVERNED_BYTES = 64 * 2**20


def usable_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadChoice:
    """The two counts the governor chooses between."""

    fewer: int
    more: int

    @classmethod
    def for_cores(cls, cores: int) -> ThreadChoice:
        """One thread per core, or one less, which leaves a core to the event loop and to
        other processes."""
        return cls(fewer=max(1, cores - 1), more=max(1, cores))


class ThreadGovernor:
    """Per decode step: `threads_for_step(rows)`, run the step with that many threads, then
    `record(threads, rows, seconds)`. Owned by one scheduler thread."""

    def __init__(self, choice: ThreadChoice) -> None:
        self.choice = choice
        self.current = choice.fewer
        self._interval = FIRST_PROBE_AFTER_STEPS
        self._until_probe = FIRST_PROBE_AFTER_STEPS
        self._recent: deque[tuple[int, float]] = deque(maxlen=COMPARED_STEPS)  # (rows, s)
        self._probe: list[tuple[int, float]] = []
        self._probing = False
        # (rows, median step s) when the current count was last chosen or confirmed.
        self._reference: tuple[int, float] | None = None

    @property
    def other(self) -> int:
        return self.choice.more if self.current == self.choice.fewer else self.choice.fewer

    @property
    def probing(self) -> bool:
        return self._probing

    def threads_for_step(self, rows: int) -> int:
        """The thread count for the next decode step of `rows` rows."""
        if self.choice.fewer == self.choice.more:
            return self.current
        if not self._probing and self._until_probe <= 0 and self._worth_probing(rows):
            self._probing = True
            self._probe = []
        return self.other if self._probing else self.current

    def record(self, threads: int, rows: int, step_s: float) -> None:
        """The time a decode step of `rows` rows took with `threads` threads."""
        if self.choice.fewer == self.choice.more:
            return
        if self._probing and threads == self.other:
            self._probe.append((rows, step_s))
            if len(self._probe) >= PROBE_STEPS or self._clearly_slower(rows, step_s):
                self._decide()
            return
        if threads != self.current:
            return
        self._recent.append((rows, step_s))
        self._until_probe -= 1
        if self._slowed_down():
            self._until_probe = 0
        elif (self._reference is None or self._reference[0] != rows) and self._comparable(
            list(self._recent), rows
        ):
            self._reference = (rows, _median(self._recent))

    def _worth_probing(self, rows: int) -> bool:
        recent = list(self._recent)
        return self._comparable(recent, rows) and _median(recent) >= MIN_PROBED_STEP_S

    def _clearly_slower(self, rows: int, step_s: float) -> bool:
        before = list(self._recent)
        return self._comparable(before, rows) and step_s > ABORT_FACTOR * _median(before)

    def _slowed_down(self) -> bool:
        recent = list(self._recent)
        if self._reference is None or not recent:
            return False
        rows, reference_s = self._reference
        return self._comparable(recent, rows) and _median(recent) > SLOWDOWN_FACTOR * reference_s

    @staticmethod
    def _comparable(samples: list[tuple[int, float]], rows: int) -> bool:
        return len(samples) >= COMPARED_STEPS and all(r == rows for r, _ in samples)

    def _decide(self) -> None:
        """End of a probe: switch when it was clearly faster than the steps before it."""
        compared = self._probe[PROBE_STEPS - COMPARED_STEPS :]
        before = list(self._recent)
        rows = self._probe[-1][0]
        self._probing = False
        if not self._comparable(before, rows):
            self._until_probe = self._interval  # the batch changed meanwhile: try again later
            return
        before_s = _median(before)
        if self._comparable(compared, rows) and _median(compared) <= SWITCH_FRACTION * before_s:
            self.current = self.other
            self._recent = deque(compared, maxlen=COMPARED_STEPS)
            self._reference = (rows, _median(compared))
            self._interval = FIRST_PROBE_AFTER_STEPS
        else:
            self._reference = (rows, before_s)
            self._interval = min(2 * self._interval, MAX_PROBE_INTERVAL_STEPS)
        self._until_probe = self._interval


def _median(samples: deque[tuple[int, float]] | list[tuple[int, float]]) -> float:
    return statistics.median(seconds for _, seconds in samples)


def governor_for(
    device_type: str, fixed_threads: int | None, weight_bytes: int
) -> ThreadGovernor | None:
    """The governor of a model's scheduler: on CPU, unless the operator fixed the count
    (LEDGERCHAT_INFERENCE_TORCH_THREADS), there is one core, or the model is too small for
    threads to matter (a test model: a second thread's wake-ups only cost there); elsewhere
    torch's threads only launch work."""
    if device_type != "cpu" or fixed_threads is not None or weight_bytes < MIN_GOVERNED_BYTES:
        return None
    choice = ThreadChoice.for_cores(usable_cores())
    return None if choice.fewer == choice.more else ThreadGovernor(choice)
