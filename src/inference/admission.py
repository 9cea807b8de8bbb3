"""The waiting queue of one model's scheduler: bounded and thread-safe for the asyncio side
(`put`, `wake`, `stop`), and what the scheduler thread takes from it before each step
(`take`): the requests that expired while waiting, and those admitted into the free rows.

An idle engine (no running or prefilling rows) that admits a request waits while more keep
arriving (each within ARRIVAL_GAP_S of the last, ADMISSION_WINDOW_S at most, or until its
free rows are full), so that requests sent together share one prefill forward instead of
queueing behind the first one's (docs/benchmarks.md). A busy engine never waits."""

from __future__ import annotations

import threading
import time
from collections import deque

from inference.errors import EngineBusy, ModelUnavailable
from inference.events import FinishReason
from inference.slots import Slot

ARRIVAL_GAP_S = 0.005
ADMISSION_WINDOW_S = 0.025
# How long an idle scheduler sleeps before re-checking its queue even without a wake-up.
IDLE_POLL_S = 1.0


class WaitingQueue:
    def __init__(self, model_id: str, limit: int) -> None:
        self._model_id = model_id
        self._limit = limit
        self._condition = threading.Condition()
        self._waiting: deque[Slot] = deque()
        self._stopping = False

    def __len__(self) -> int:
        with self._condition:
            return len(self._waiting)

    def put(self, slot: Slot) -> None:
        """Queue a request; EngineBusy at once when the queue is full."""
        with self._condition:
            if self._stopping:
                raise ModelUnavailable(self._model_id, "the engine is shutting down")
            if len(self._waiting) >= self._limit:
                raise EngineBusy(
                    f"model {self._model_id!r} has {len(self._waiting)} requests waiting "
                    f"(limit {self._limit}); try again shortly"
                )
            self._waiting.append(slot)
            self._condition.notify()

    def wake(self) -> None:
        """Wake the scheduler thread (a request was cancelled)."""
        with self._condition:
            self._condition.notify()

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify()

    def close(self) -> list[Slot]:
        """Refuse new requests from now on; the ones still waiting."""
        with self._condition:
            self._stopping = True
            leftovers = list(self._waiting)
            self._waiting.clear()
        return leftovers

    def take(
        self, free_rows: int, idle: bool
    ) -> tuple[list[tuple[Slot, FinishReason]], list[Slot]] | None:
        """(expired, admitted) for the next step; None once stopping. An idle engine with
        nothing to take waits up to IDLE_POLL_S for a request and returns empty lists."""
        with self._condition:
            if self._stopping:
                return None
            expired = self._take_expired()
            admitted = self._admit([], free_rows)
            if admitted and idle:
                self._gather_arrivals(admitted, free_rows)
            elif idle and not admitted and not expired:
                self._condition.wait(IDLE_POLL_S)
            return expired, admitted

    def _admit(self, admitted: list[Slot], free_rows: int) -> list[Slot]:
        while self._waiting and len(admitted) < free_rows:
            admitted.append(self._waiting.popleft())
        return admitted

    def _gather_arrivals(self, admitted: list[Slot], free_rows: int) -> None:
        """Lock held: admit requests arriving right behind `admitted`."""
        deadline = time.monotonic() + ADMISSION_WINDOW_S
        while len(admitted) < free_rows and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._condition.wait(min(left, ARRIVAL_GAP_S))
            if not self._waiting:
                return
            self._admit(admitted, free_rows)

    def _take_expired(self) -> list[tuple[Slot, FinishReason]]:
        now = time.monotonic()
        expired: list[tuple[Slot, FinishReason]] = []
        kept: deque[Slot] = deque()
        for slot in self._waiting:
            if slot.cancel_requested:
                expired.append((slot, "cancelled"))
            elif now >= slot.deadline_at:
                expired.append((slot, "timeout"))
            else:
                kept.append(slot)
        self._waiting = kept
        return expired
