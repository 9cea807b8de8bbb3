"""One scheduler thread per loaded model: continuous batching of that model's requests.

Requests wait in a bounded queue. Between decode steps the thread admits waiting requests up
to the batch limit (prompts admitted together are prefilled together, a chunk of at most
`prefill_chunk_tokens` per step, so a long prompt neither stalls the running rows nor the
prompts admitted after it; see `prefilling.py`), joins each finished prefill to the running
batch, drops rows that were cancelled or ran past their deadline, and runs one decode step for
every remaining row.
Each row streams its own events back to the asyncio loop through `Slot.deliver`, which must be
thread-safe (the engine uses loop.call_soon_threadsafe). Generation never runs on the loop.
What a sampled token does to its request (text, stop strings, limits, the final event) is
`inference.slots`; this module owns the queue, admission, the batch and its failures."""

from __future__ import annotations

import threading
import time

import structlog
import torch

from inference.admission import WaitingQueue
from inference.batching import (
    RunningBatch,
    decode_step,
    finish_prefill,
    join,
    keep_rows,
    prefill_chunk,
    row_layers,
    set_next_tokens,
)
from inference.errors import OutOfMemory
from inference.events import FinishReason
from inference.loading import LoadedModel, free_memory, is_out_of_memory
from inference.prefilling import Prefilling, chunk_plan, plan_prefills
from inference.prefix_cache import PrefixCache
from inference.sampling import apply_repetition_guard, sample_each_row
from inference.slots import Row, Slot, accept_token, finish, token_or_pad
from inference.threads import ThreadGovernor

log = structlog.get_logger(__name__)


class ModelScheduler:
    """Owns the model's running batch; all model calls happen on its thread."""

    def __init__(
        self,
        loaded: LoadedModel,
        queue_limit: int,
        max_batch_size: int,
        prefix_cache_bytes: int = 0,
        prefill_chunk_tokens: int = 256,
        governor: ThreadGovernor | None = None,
    ) -> None:
        self._loaded = loaded
        # Chooses the torch thread count of each decode step (None: the count is fixed).
        self._governor = governor
        self._prefill_chunk_tokens = prefill_chunk_tokens
        self._prefix_cache = PrefixCache(prefix_cache_bytes)
        self._max_batch_size = max_batch_size
        self._queue = WaitingQueue(loaded.entry.id, queue_limit)
        self._rows: list[Row] = []
        self._batch: RunningBatch | None = None
        # Admitted prompts whose prefill is under way (chunk by chunk), oldest first.
        self._prefilling: list[Prefilling] = []
        # Slots taken off the queue this step and not yet in the batch; only the thread
        # touches them, but they must still get their Finished if a step or the thread fails.
        self._admitting: list[Slot] = []
        self._crashed = False
        self._thread = threading.Thread(
            target=self._run, name=f"scheduler-{loaded.entry.id}", daemon=True
        )

    @property
    def model_id(self) -> str:
        return self._loaded.entry.id

    def start(self) -> None:
        self._thread.start()

    def submit(self, slot: Slot) -> None:
        """Queue a request; EngineBusy at once when the waiting queue is full."""
        self._queue.put(slot)

    def cancel(self, slot: Slot) -> None:
        """Ask for the request to end; it finishes within one decode step."""
        slot.cancel_requested = True
        self._queue.wake()

    def stop(self) -> None:
        self._queue.stop()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    @property
    def crashed(self) -> bool:
        """True once the thread died of an unexpected error: the model must be reloaded."""
        return self._crashed

    @property
    def waiting_count(self) -> int:
        return len(self._queue)

    @property
    def running_count(self) -> int:
        """Admitted requests: rows in the running batch and prompts being prefilled (read
        without a lock: a snapshot for metrics)."""
        return len(self._rows) + sum(len(item.rows) for item in list(self._prefilling))

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                self._loop()
        except BaseException as exc:  # the thread must never die silently with requests inside
            self._crashed = True
            log.exception("scheduler_crashed", model=self.model_id, error=repr(exc))
            text = f"scheduler crashed: {exc!r}"
            for slot in self._admitting:
                self._finish(slot, "error", None, None, text)
            self._fail_prefilling("error", text, None)
            self._fail_all("error", text, None)
            raise
        finally:
            leftovers = self._queue.close()
            for slot in self._admitting:
                self._finish(slot, "cancelled", None)
            self._admitting = []
            self._fail_prefilling("cancelled", None, None)
            for row in self._rows:
                self._finish(row.slot, "cancelled", row)
            self._rows = []
            self._batch = None
            for slot in leftovers:
                self._finish(slot, "cancelled", None)

    def _loop(self) -> None:
        while True:
            occupied = len(self._rows) + sum(len(item.rows) for item in self._prefilling)
            taken = self._queue.take(self._max_batch_size - occupied, idle=occupied == 0)
            if taken is None:
                return
            expired, admitted = taken
            if not admitted and not expired and occupied == 0:
                continue
            self._admitting = admitted + [slot for slot, _ in expired]
            try:
                self._step(expired, admitted)
            except (Exception, MemoryError) as exc:  # ends the step's requests, not the thread
                self._fail_step(exc)
            self._admitting = []

    def _step(self, expired: list[tuple[Slot, FinishReason]], admitted: list[Slot]) -> None:
        """Finish what ended, start prefilling what was admitted, advance the prefills by one
        budget of tokens (joining those that finish), run one decode step."""
        for slot, reason in expired:
            self._finish(slot, reason, None)
        self._drop_ended_rows()
        self._drop_ended_prefills()
        for members in plan_prefills(self._admissible(admitted), self._prefix_cache):
            self._prefilling.append(Prefilling.start(self._loaded, members))
        self._admitting = []
        if self._prefilling and self._governor is not None:
            _use_threads(self._governor.current)
        for item, columns in chunk_plan(self._prefilling, self._prefill_chunk_tokens):
            self._advance(item, columns)
        if self._rows:
            self._decode()

    def _fail_step(self, exc: BaseException) -> None:
        """A failure outside a forward (joining caches, trimming the batch, ...) may leave the
        batch half-changed: every request of the step and of the batch ends with the error."""
        log.exception("scheduler_step_failed", model=self.model_id, batch_size=len(self._rows))
        self._batch = None
        error = _as_out_of_memory(exc, self.model_id, "batching requests for")
        text = f"{type(exc).__name__}: {exc}"
        for slot in self._admitting:
            self._finish(slot, "error", None, error, text)
        self._fail_prefilling("error", text, error)
        self._fail_all("error", text, error)

    def _drop_ended_rows(self) -> None:
        now = time.monotonic()
        for row in self._rows:
            if row.slot.cancel_requested:
                self._finish(row.slot, "cancelled", row)
            elif now >= row.slot.deadline_at:
                self._finish(row.slot, "timeout", row)
        self._remove_finished_rows()

    def _admissible(self, slots: list[Slot]) -> list[Slot]:
        """The admitted slots still wanted; the others finish without running."""
        now = time.monotonic()
        wanted = []
        for slot in slots:
            slot.admitted_at = now
            if slot.cancel_requested:
                self._finish(slot, "cancelled", None)
            elif now >= slot.deadline_at:
                self._finish(slot, "timeout", None)
            else:
                wanted.append(slot)
        return wanted

    def _drop_ended_prefills(self) -> None:
        """Prompts cancelled or past their deadline while prefilling end now; a group none of
        whose requests is still wanted stops prefilling."""
        now = time.monotonic()
        for item in self._prefilling:
            for row in item.rows:
                if row.slot.cancel_requested:
                    self._finish(row.slot, "cancelled", row)
                elif now >= row.slot.deadline_at:
                    self._finish(row.slot, "timeout", row)
        self._prefilling = [item for item in self._prefilling if item.wanted]

    def _advance(self, item: Prefilling, columns: int) -> None:
        """Feed `columns` more columns of a prefill; when it is complete, emit its first
        tokens and join its still-running rows to the batch."""
        rows = item.rows
        try:
            prefill_chunk(self._loaded.runner, item.prefill, columns)
            logits = item.prefill.logits
            if logits is None:
                return
            first_tokens = sample_each_row(
                logits, [row.slot.sampling for row in rows], [row.generator for row in rows]
            )
        except (Exception, MemoryError) as exc:  # a failed forward ends these requests only
            log.exception("generation_failed", model=self.model_id, prefill_rows=len(rows))
            self._prefilling.remove(item)
            error = _as_out_of_memory(exc, self.model_id, "prefilling for")
            for row in rows:
                self._finish(row.slot, "error", row, error, f"{type(exc).__name__}: {exc}")
            return
        self._fail_unsampled(rows, first_tokens)
        incoming = finish_prefill(item.prefill)
        set_next_tokens(incoming, [token_or_pad(token) for token in first_tokens])
        still_running = [
            index
            for index, (row, token_id) in enumerate(zip(rows, first_tokens, strict=True))
            if not row.slot.finished
            and not isinstance(token_id, Exception)
            and not self._accept_token(row, token_id)
        ]
        remaining = keep_rows(incoming, still_running)
        if remaining is not None:
            self._batch = join(self._batch, remaining, self._max_batch_size)
            self._rows += [rows[index] for index in still_running]
        # Only now: should joining fail, the step's failure handling still finds its rows.
        self._prefilling.remove(item)

    def _decode(self) -> None:
        assert self._batch is not None and self._batch.size == len(self._rows)
        rows = len(self._rows)
        threads = 0
        if self._governor is not None:
            threads = self._governor.threads_for_step(rows)
            _use_threads(threads)
        started = time.perf_counter()
        try:
            logits = decode_step(self._loaded.runner, self._batch)  # [batch, vocab]
            logits = apply_repetition_guard(
                logits, self._batch.history, self._loaded.entry.prompting
            )
            token_ids = sample_each_row(
                logits,
                [row.slot.sampling for row in self._rows],
                [row.generator for row in self._rows],
            )
        except (Exception, MemoryError) as exc:  # ends the batch's requests, not the thread
            log.exception("generation_failed", model=self.model_id, batch_size=len(self._rows))
            self._batch = None
            error = _as_out_of_memory(exc, self.model_id, "generating with")
            self._fail_all("error", f"{type(exc).__name__}: {exc}", error)
            return
        if self._governor is not None:  # the ids are on the CPU: the step's work is done
            chosen = self._governor.current
            self._governor.record(threads, rows, time.perf_counter() - started)
            if self._governor.current != chosen:
                log.info("torch_threads_changed", model=self.model_id, threads=threads, rows=rows)
        self._fail_unsampled(self._rows, token_ids)
        set_next_tokens(self._batch, [token_or_pad(token) for token in token_ids])
        for row, token_id in zip(self._rows, token_ids, strict=True):
            if not isinstance(token_id, Exception):
                self._accept_token(row, token_id)
        self._remove_finished_rows()

    def _fail_unsampled(self, rows: list[Row], tokens: list[int | Exception]) -> None:
        """A row whose sampling failed ends with the error; the other rows go on."""
        for row, token in zip(rows, tokens, strict=True):
            if isinstance(token, Exception):
                log.error("sampling_failed", model=self.model_id, error=repr(token))
                self._finish(row.slot, "error", None, None, f"{type(token).__name__}: {token}")

    def _accept_token(self, row: Row, token_id: int) -> bool:
        """Record one generated token; True when the request finished with it."""
        reason = accept_token(row, token_id, self._loaded.stop_token_ids)
        if reason is not None:
            self._finish(row.slot, reason, row)
        return reason is not None

    def _remove_finished_rows(self) -> None:
        keep = [index for index, row in enumerate(self._rows) if not row.slot.finished]
        if len(keep) == len(self._rows):
            return
        if self._batch is not None:
            for index, row in enumerate(self._rows):
                if row.slot.finished and row.slot.finish_reason != "error":
                    try:
                        self._remember_prefix(index, row.slot)
                    except (Exception, MemoryError) as exc:  # the cache only saves time
                        log.exception("prefix_cache_store_failed", model=self.model_id)
                        if is_out_of_memory(exc):
                            free_memory()
        self._rows = [self._rows[index] for index in keep]
        if self._batch is not None:
            self._batch = keep_rows(self._batch, keep)

    def _remember_prefix(self, index: int, slot: Slot) -> None:
        """Keep the row's keys and values for a next turn that starts with the same tokens."""
        assert self._batch is not None
        # Every generated token but the last was fed through the model.
        fed_ids = slot.prompt_ids + slot.generated[:-1]
        layers = row_layers(self._batch, index)
        assert layers[0][0].shape[2] == len(fed_ids), "row cache out of step with its tokens"
        self._prefix_cache.store(fed_ids, layers)

    def _fail_prefilling(
        self, reason: FinishReason, error_text: str | None, error: OutOfMemory | None
    ) -> None:
        for item in self._prefilling:
            for row in item.rows:
                self._finish(row.slot, reason, row, error, error_text)
        self._prefilling = []

    def _fail_all(
        self, reason: FinishReason, error_text: str | None, error: OutOfMemory | None
    ) -> None:
        for row in self._rows:
            self._finish(row.slot, reason, row, error, error_text)
        self._rows = []
        self._batch = None

    def _finish(
        self,
        slot: Slot,
        reason: FinishReason,
        row: Row | None,
        error: OutOfMemory | None = None,
        error_text: str | None = None,
    ) -> None:
        finish(slot, reason, row, error, error_text)


def _use_threads(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _as_out_of_memory(error: BaseException, model_id: str, during: str) -> OutOfMemory | None:
    """OutOfMemory (after freeing what the failed step held) when `error` is one."""
    if not is_out_of_memory(error):
        return None
    free_memory()
    return OutOfMemory(model_id, during)
