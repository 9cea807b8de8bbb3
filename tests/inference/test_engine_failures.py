"""The engine under failures between forwards, extreme sampling parameters, and races around
model loading and request ids.

Failures that cannot be produced for real on the tiny model (an out-of-memory while joining
KV caches, a slow load) are simulated by patching one function; the model itself is the real
tiny Gemma 3 loaded through the real loading code. Gates (threading events) order the steps,
so no test depends on timing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import inference.engine as engine_mod
import inference.sampling as sampling_mod
import inference.scheduler as sched_mod
from inference import (
    Engine,
    InvalidRequest,
    ModelUnavailable,
    SamplingParams,
)
from tests.inference.conftest import TINY, EngineFactory
from tests.inference.helpers import collect, request, wait_until

OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1048576 bytes"
# Same prompt as the reviewer's probe: greedy, the tiny model runs it past 50 tokens.
LONG_PROMPT = "first request here"
WAIT_S = 20.0


class Gate:
    """Blocks a patched function (on its thread) until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.calls = 0

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def gated(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.entered.set()
            assert self.released.wait(WAIT_S), "gate never released"
            return real(*args, **kwargs)

        return gated

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, WAIT_S), "gate never reached"


@pytest.fixture
def decode_gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate()
    monkeypatch.setattr(sched_mod, "decode_step", gate.wrap(sched_mod.decode_step))
    yield gate
    gate.released.set()


@pytest.fixture
def load_gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate()
    monkeypatch.setattr(engine_mod, "load_model", gate.wrap(engine_mod.load_model))
    yield gate
    gate.released.set()


def scheduler_of(engine: Engine) -> sched_mod.ModelScheduler:
    scheduler = engine._states[TINY].scheduler
    assert scheduler is not None
    return scheduler


async def hold_batch_then_queue(
    engine: Engine, gate: Gate, queued: list[Any]
) -> tuple[asyncio.Task[Any], list[asyncio.Task[Any]]]:
    """Start a long request, hold its first decode step at the gate, queue `queued` behind it
    and release: they are then admitted together, into a batch that already has a row."""
    first = asyncio.create_task(collect(engine.stream(request(TINY, LONG_PROMPT, 50))))
    await gate.wait_entered()
    tasks = [asyncio.create_task(collect(engine.stream(req))) for req in queued]
    scheduler = scheduler_of(engine)
    await wait_until(lambda: scheduler.waiting_count == len(queued), WAIT_S)
    gate.released.set()
    return first, tasks


class TestFailuresBetweenForwards:
    async def test_join_out_of_memory_ends_the_step_not_the_scheduler(
        self, make_engine: EngineFactory, decode_gate: Gate, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An OOM while joining a new row's cache ends the admitted and running requests with
        out_of_memory; the scheduler thread lives on and serves the next request."""
        engine = make_engine()
        await engine.load(TINY)
        scheduler = scheduler_of(engine)
        real_join = sched_mod.join

        def join_fails_second_time(batch: Any, incoming: Any, *rest: Any) -> Any:
            if batch is not None:  # joining into a running batch
                raise RuntimeError(OOM)
            return real_join(batch, incoming, *rest)

        monkeypatch.setattr(sched_mod, "join", join_fails_second_time)
        first, (second,) = await hold_batch_then_queue(
            engine, decode_gate, [request(TINY, "second request", 5)]
        )
        _, second_finished = await asyncio.wait_for(second, WAIT_S)
        _, first_finished = await asyncio.wait_for(first, WAIT_S)
        for finished in (first_finished, second_finished):
            assert finished.finish_reason == "error"
            assert finished.error_code == "out_of_memory"
        monkeypatch.setattr(sched_mod, "join", real_join)
        _, later = await asyncio.wait_for(collect(engine.stream(request(TINY, "later", 4))), WAIT_S)
        assert later.finish_reason in ("length", "stop")
        assert scheduler_of(engine) is scheduler and not scheduler.crashed

    async def test_prefix_cache_copy_failure_only_skips_the_cache(
        self, make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An OOM while keeping a finished row's KV cache for its next turn loses the cache
        entry only: the request still ends normally."""
        engine = make_engine()
        await engine.load(TINY)

        def store_fails(self: Any, token_ids: Any, layers: Any) -> None:
            raise RuntimeError(OOM)

        monkeypatch.setattr(sched_mod.PrefixCache, "store", store_fails)
        _, finished = await asyncio.wait_for(
            collect(engine.stream(request(TINY, LONG_PROMPT, 20))), WAIT_S
        )
        assert finished.finish_reason in ("length", "stop")
        assert not scheduler_of(engine).crashed

    @pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
    async def test_dead_scheduler_finishes_admitted_request_and_model_reloads(
        self,
        make_engine: EngineFactory,
        decode_gate: Gate,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """When even the step's error handling fails and the thread dies, the request being
        admitted still gets its Finished, and the next request loads the model again instead
        of meeting a dead scheduler ('shutting down')."""
        engine = make_engine()
        await engine.load(TINY)
        dead = scheduler_of(engine)
        real_join = sched_mod.join
        loads: list[str] = []
        real_load = engine_mod.load_model

        def counting_load(entry: Any, settings: Any, **options: Any) -> Any:
            loads.append(entry.id)
            return real_load(entry, settings, **options)

        def join_fails(batch: Any, incoming: Any, *rest: Any) -> Any:
            if batch is not None:
                raise RuntimeError(OOM)
            return real_join(batch, incoming, *rest)

        def handler_fails(self: Any, exc: BaseException) -> None:
            raise RuntimeError("the error handler broke too") from exc

        monkeypatch.setattr(engine_mod, "load_model", counting_load)
        monkeypatch.setattr(sched_mod, "join", join_fails)
        monkeypatch.setattr(sched_mod.ModelScheduler, "_fail_step", handler_fails)
        first, (second,) = await hold_batch_then_queue(
            engine, decode_gate, [request(TINY, "second request", 5, deadline_s=60.0)]
        )
        _, second_finished = await asyncio.wait_for(second, WAIT_S)
        _, first_finished = await asyncio.wait_for(first, WAIT_S)
        assert second_finished.finish_reason == "error"
        assert first_finished.finish_reason == "error"
        await asyncio.to_thread(dead.join, WAIT_S)
        assert dead.crashed
        monkeypatch.setattr(sched_mod, "join", real_join)
        _, later = await asyncio.wait_for(collect(engine.stream(request(TINY, "later", 4))), WAIT_S)
        assert later.finish_reason in ("length", "stop")
        assert loads == [TINY]
        assert scheduler_of(engine) is not dead


class TestSampling:
    def test_tiny_temperature_is_greedy(self) -> None:
        assert SamplingParams(temperature=1e-45).greedy
        assert SamplingParams(temperature=5e-6).greedy
        assert not SamplingParams(temperature=1e-3).greedy

    async def test_tiny_temperature_generates_the_greedy_answer(
        self, make_engine: EngineFactory
    ) -> None:
        """temperature=1e-45 used to overflow to inf/NaN and fail; it now answers greedily."""
        engine = make_engine()
        await engine.load(TINY)
        tiny = request(TINY, "bad one", 12, temperature=1e-45, top_k=0, top_p=1.0)
        greedy = request(TINY, "bad one", 12)
        tiny_text, tiny_finished = await collect(engine.stream(tiny))
        greedy_text, greedy_finished = await collect(engine.stream(greedy))
        assert tiny_finished.finish_reason != "error", tiny_finished.error
        assert (tiny_text, tiny_finished.completion_tokens) == (
            greedy_text,
            greedy_finished.completion_tokens,
        )

    async def test_one_rows_sampling_error_ends_only_that_row(
        self, make_engine: EngineFactory, decode_gate: Gate, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A row whose sampling fails (at its first token or later) ends with an error; the
        other rows of its prefill group and of the decode batch go on."""
        engine = make_engine(max_batch_size=8, queue_limit=8)
        await engine.load(TINY)
        real_sample_row = sampling_mod._sample_row
        calls: dict[int | None, int] = {}
        fail_at_call = {101: 1, 102: 3}  # seed -> which of its samplings fails

        def sample_row(logits: Any, sampling: SamplingParams, generator: Any) -> int:
            calls[sampling.seed] = calls.get(sampling.seed, 0) + 1
            if fail_at_call.get(sampling.seed) == calls[sampling.seed]:
                raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
            return real_sample_row(logits, sampling, generator)

        monkeypatch.setattr(sampling_mod, "_sample_row", sample_row)
        good = [request(TINY, f"hello number {i}", 8, temperature=1.0, seed=i) for i in range(3)]
        bad = [request(TINY, f"bad {seed}", 8, temperature=1.0, seed=seed) for seed in (101, 102)]
        first, tasks = await hold_batch_then_queue(engine, decode_gate, good + bad)
        results = await asyncio.wait_for(asyncio.gather(first, *tasks), WAIT_S)
        reasons = [finished.finish_reason for _, finished in results]
        assert all(reason in ("length", "stop") for reason in reasons[:4]), results
        assert reasons[4:] == ["error", "error"]
        assert results[4][1].completion_tokens == 0
        assert results[5][1].completion_tokens == 2
        assert "probability tensor" in (results[4][1].error or "")


class TestLoading:
    async def test_cancelled_caller_does_not_start_a_second_load(
        self, make_engine: EngineFactory, load_gate: Gate
    ) -> None:
        """A caller cancelled during a load leaves the load running; the next caller awaits
        that same load instead of starting a second one."""
        engine = make_engine()
        first = asyncio.create_task(collect(engine.stream(request(TINY, "a", 2))))
        await load_gate.wait_entered()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.create_task(collect(engine.stream(request(TINY, "b", 2))))
        await asyncio.sleep(0)  # the second caller reaches the (still running) load
        load_gate.released.set()
        _, finished = await asyncio.wait_for(second, WAIT_S)
        assert finished.finish_reason in ("length", "stop")
        assert load_gate.calls == 1

    async def test_close_during_load_drops_the_model(
        self, make_engine: EngineFactory, load_gate: Gate
    ) -> None:
        """close() while a model loads: the load's result is dropped (no scheduler thread
        left running) and the waiting request fails with ModelUnavailable."""
        engine = make_engine()
        stream_task = asyncio.create_task(collect(engine.stream(request(TINY, "a", 300))))
        await load_gate.wait_entered()
        close_task = asyncio.create_task(engine.close())
        await asyncio.sleep(0)
        load_gate.released.set()
        await asyncio.wait_for(close_task, WAIT_S)
        with pytest.raises(ModelUnavailable):
            await asyncio.wait_for(stream_task, WAIT_S)
        assert engine.loaded_model(TINY) is None
        assert engine._states[TINY].scheduler is None
        assert not [t for t in threading.enumerate() if t.name == f"scheduler-{TINY}"]


class TestRequestIds:
    async def test_cancel_while_preparing(
        self, make_engine: EngineFactory, load_gate: Gate
    ) -> None:
        """engine.cancel() during the model load finds the request; it then ends 'cancelled'
        without generating (nothing billable)."""
        engine = make_engine()
        req = request(TINY, "a", 40, request_id="stop-me")
        task = asyncio.create_task(collect(engine.stream(req)))
        await load_gate.wait_entered()
        assert engine.cancel("stop-me") is True
        load_gate.released.set()
        _, finished = await asyncio.wait_for(task, WAIT_S)
        assert finished.finish_reason == "cancelled"
        assert finished.completion_tokens == 0
        assert engine.cancel("stop-me") is False

    async def test_concurrent_duplicate_request_id_is_refused(
        self, make_engine: EngineFactory
    ) -> None:
        """Two streams with one request_id started together: exactly one runs."""
        engine = make_engine()
        one = request(TINY, "a", 4, request_id="dup")
        two = request(TINY, "b", 4, request_id="dup")
        results = await asyncio.wait_for(
            asyncio.gather(
                collect(engine.stream(one)), collect(engine.stream(two)), return_exceptions=True
            ),
            WAIT_S,
        )
        assert isinstance(results[1], InvalidRequest)
        assert not isinstance(results[0], BaseException)
        # The refused stream did not free the id of the one that ran; once that ends, the
        # id is free again.
        assert "dup" not in engine._active
        _, again = await collect(engine.stream(request(TINY, "c", 2, request_id="dup")))
        assert again.finish_reason in ("length", "stop")

    async def test_refused_duplicate_does_not_free_the_running_id(
        self, make_engine: EngineFactory, load_gate: Gate
    ) -> None:
        engine = make_engine()
        running = asyncio.create_task(collect(engine.stream(request(TINY, "a", 2, request_id="x"))))
        await load_gate.wait_entered()
        with pytest.raises(InvalidRequest):
            await collect(engine.stream(request(TINY, "b", 2, request_id="x")))
        assert "x" in engine._active
        load_gate.released.set()
        await asyncio.wait_for(running, WAIT_S)
