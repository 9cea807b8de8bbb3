"""The engine end to end on a tiny random Gemma 3: streaming, token counts, batching,
cancellation, deadlines, the bounded queue, fallback and errors."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from inference import (
    EngineBusy,
    Finished,
    InvalidRequest,
    ModelUnavailable,
    PromptTooLong,
    TextDelta,
    admission,
)
from inference import scheduler as scheduler_module
from inference.batching import BatchedModel, PendingPrefill
from inference.text import encode_prompt
from tests.inference.conftest import (
    TINY,
    TINY_BROKEN,
    TINY_CAP,
    TINY_CONTEXT_LIMIT,
    TINY_MISSING,
    EngineFactory,
)
from tests.inference.helpers import (
    collect,
    expected_text,
    reference_greedy_ids,
    request,
    wait_until,
)

PROMPTS = [
    "hello there",
    "a somewhat longer prompt that crosses the sliding window several times",
    "short",
    "numbers 1 2 3 4 5 6 7 8 9 and punctuation !?",
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u20ac",
    "the last one",
]


class TestStreaming:
    async def test_stream_matches_plain_generate(self, make_engine: EngineFactory) -> None:
        """Greedy text and token counts equal what transformers' generate gives alone."""
        engine = make_engine()
        await engine.load(TINY)
        req = request(TINY, PROMPTS[1], max_new_tokens=24)
        reference = reference_greedy_ids(engine, req)
        text, finished = await collect(engine.stream(req))
        loaded = engine.loaded_model(TINY)
        assert loaded is not None
        assert finished.prompt_tokens == len(encode_prompt(loaded.tokenizer, req.messages))
        assert finished.completion_tokens == len(reference)
        assert text == expected_text(engine, TINY, reference)
        ended_on_stop_token = reference[-1] in loaded.stop_token_ids
        assert finished.finish_reason == ("stop" if ended_on_stop_token else "length")
        assert finished.model_id_answered == TINY and finished.fell_back_from is None
        assert finished.timings.time_to_first_token_ms is not None
        assert finished.timings.total_ms >= finished.timings.time_to_first_token_ms

    async def test_stream_emits_deltas_before_finished(self, make_engine: EngineFactory) -> None:
        """Text arrives as several deltas while decoding, and Finished comes exactly once, last."""
        engine = make_engine()
        events = [event async for event in engine.stream(request(TINY, "hi", max_new_tokens=12))]
        assert isinstance(events[-1], Finished)
        assert sum(isinstance(event, Finished) for event in events) == 1
        assert sum(isinstance(event, TextDelta) for event in events) >= 2

    async def test_length_limit(self, make_engine: EngineFactory) -> None:
        """max_new_tokens bounds the completion and is reported as finish_reason 'length'."""
        engine = make_engine()
        await engine.load(TINY)
        req = request(TINY, "count", max_new_tokens=5)
        reference = reference_greedy_ids(engine, req)
        _, finished = await collect(engine.stream(req))
        assert finished.completion_tokens == len(reference) <= 5
        if len(reference) == 5:
            assert finished.finish_reason == "length"

    async def test_stop_string_ends_and_is_not_emitted(self, make_engine: EngineFactory) -> None:
        """Text stops right before the first stop string, which never appears in the output."""
        engine = make_engine()
        await engine.load(TINY)
        free_text, _ = await collect(engine.stream(request(TINY, PROMPTS[0], max_new_tokens=30)))
        assert len(free_text) >= 6, "the reference completion is too short to pick a stop string"
        stop = free_text[3:6]
        text, finished = await collect(
            engine.stream(request(TINY, PROMPTS[0], max_new_tokens=30, stop=(stop,)))
        )
        assert finished.finish_reason == "stop"
        assert text == free_text[: free_text.index(stop)]

    async def test_seeded_sampling_is_reproducible(self, make_engine: EngineFactory) -> None:
        """The same seed gives the same sampled text."""
        engine = make_engine()
        first = await collect(engine.stream(request(TINY, "x", 20, temperature=1.0, seed=7)))
        second = await collect(engine.stream(request(TINY, "x", 20, temperature=1.0, seed=7)))
        assert first[0] == second[0]
        assert first[1].completion_tokens == second[1].completion_tokens


class TestBatching:
    async def test_batched_outputs_equal_single_outputs(self, make_engine: EngineFactory) -> None:
        """Requests that share the running batch (joining and leaving at different steps, more
        than fit at once) produce exactly their single-request greedy outputs."""
        engine = make_engine(max_batch_size=4, queue_limit=8)
        await engine.load(TINY)
        requests = [request(TINY, text, max_new_tokens=8 + 5 * i) for i, text in enumerate(PROMPTS)]
        expected = [reference_greedy_ids(engine, req) for req in requests]
        first_wave = [asyncio.create_task(collect(engine.stream(req))) for req in requests[:3]]
        await asyncio.sleep(0.02)  # the later ones join a batch that is already decoding
        second_wave = [asyncio.create_task(collect(engine.stream(req))) for req in requests[3:]]
        results = await asyncio.gather(*first_wave, *second_wave)
        for (text, finished), reference in zip(results, expected, strict=True):
            assert finished.completion_tokens == len(reference)
            assert text == expected_text(engine, TINY, reference)

    async def test_chunked_prefill_alongside_decoding_rows(
        self, make_engine: EngineFactory
    ) -> None:
        """With 16-token prefill chunks, a long prompt admitted while short requests decode
        is fed over several steps between their decode steps; every request still produces
        exactly its single-request greedy output."""
        engine = make_engine(max_batch_size=4, prefill_chunk_tokens=16)
        await engine.load(TINY)
        long_text = " ".join(PROMPTS)  # well over 16 tokens
        requests = [request(TINY, text, max_new_tokens=12) for text in (*PROMPTS[:2], long_text)]
        expected = [reference_greedy_ids(engine, req) for req in requests]
        short = [asyncio.create_task(collect(engine.stream(req))) for req in requests[:2]]
        await asyncio.sleep(0.02)
        results = [*await asyncio.gather(*short, collect(engine.stream(requests[2])))]
        for (text, finished), reference in zip(results, expected, strict=True):
            assert finished.completion_tokens == len(reference)
            assert text == expected_text(engine, TINY, reference)

    async def test_requests_sent_together_share_one_prefill(
        self, make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An idle engine admits requests that arrive one after another, each within the
        arrival gap of the last, together: one prefill forward for all of them rather than the
        first one alone and the others behind it. The gap is widened here so that the test
        does not depend on how fast it submits; the window ends once the batch is full."""
        monkeypatch.setattr(admission, "ARRIVAL_GAP_S", 5.0)
        monkeypatch.setattr(admission, "ADMISSION_WINDOW_S", 60.0)
        fed_rows: list[int] = []
        real_chunk = scheduler_module.prefill_chunk

        def counting_chunk(runner: BatchedModel, pending: PendingPrefill, columns: int) -> None:
            fed_rows.append(pending.rows)
            real_chunk(runner, pending, columns)

        monkeypatch.setattr(scheduler_module, "prefill_chunk", counting_chunk)
        engine = make_engine(max_batch_size=3, queue_limit=8)
        await engine.load(TINY)
        requests = [request(TINY, text, max_new_tokens=4) for text in ("hello", "short", "hi")]
        expected = [reference_greedy_ids(engine, req) for req in requests]
        tasks = []
        for req in requests:
            tasks.append(asyncio.create_task(collect(engine.stream(req))))
            await asyncio.sleep(0.05)  # arrivals 50 ms apart: within the widened gap
        results = await asyncio.gather(*tasks)
        assert fed_rows == [3]
        for (text, _), reference in zip(results, expected, strict=True):
            assert text == expected_text(engine, TINY, reference)

    async def test_batch_serves_all_within_limit(self, make_engine: EngineFactory) -> None:
        """With max_batch_size 2, six concurrent requests all finish; none waits forever."""
        engine = make_engine(max_batch_size=2, queue_limit=8)
        results = await asyncio.gather(
            *(collect(engine.stream(request(TINY, text, max_new_tokens=6))) for text in PROMPTS)
        )
        assert all(finished.completion_tokens >= 1 for _, finished in results)
        await wait_until(lambda: engine.load_snapshot(TINY).running == 0)


class TestCancellation:
    async def test_aclose_stops_and_reports_exact_tokens(self, make_engine: EngineFactory) -> None:
        """aclose() ends generation early; the final event has finish_reason 'cancelled' and
        the count of tokens generated so far, and the batch slot is freed."""
        engine = make_engine()
        stream = engine.stream(request(TINY, "go on", max_new_tokens=TINY_CAP))
        first = await anext(stream)
        assert isinstance(first, TextDelta)
        await stream.aclose()
        assert stream.finished is not None
        assert stream.finished.finish_reason == "cancelled"
        assert 1 <= stream.finished.completion_tokens < TINY_CAP
        await wait_until(lambda: engine.load_snapshot(TINY).running == 0)

    async def test_engine_cancel_text_matches_counted_tokens(
        self, make_engine: EngineFactory
    ) -> None:
        """After engine.cancel(), the text received is exactly the decoding of the tokens the
        final event counts."""
        engine = make_engine()
        req = request(TINY, "go on", max_new_tokens=TINY_CAP)
        text = ""
        finished: Finished | None = None
        async for event in engine.stream(req):
            if isinstance(event, TextDelta):
                text += event.text
                if len(text) >= 3:
                    assert engine.cancel(req.request_id)
            else:
                finished = event
        assert finished is not None and finished.finish_reason == "cancelled"
        assert finished.completion_tokens < TINY_CAP
        counted = request(TINY, "go on", max_new_tokens=finished.completion_tokens)
        reference = reference_greedy_ids(engine, counted)
        assert len(reference) == finished.completion_tokens
        assert text == expected_text(engine, TINY, reference)
        assert not engine.cancel(req.request_id)

    async def test_break_frees_the_slot(self, make_engine: EngineFactory) -> None:
        """Breaking out of `async for` stops the request without any explicit close."""
        engine = make_engine()
        async for _event in engine.stream(request(TINY, "go on", max_new_tokens=TINY_CAP)):
            break
        await wait_until(lambda: engine.load_snapshot(TINY).running == 0)

    async def test_cancelling_the_consumer_task_frees_the_slot(
        self, make_engine: EngineFactory
    ) -> None:
        """Cancelling the task that consumes the stream stops generation."""
        engine = make_engine()
        started = asyncio.Event()

        async def consume() -> None:
            async for _event in engine.stream(request(TINY, "go on", max_new_tokens=TINY_CAP)):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: engine.load_snapshot(TINY).running == 0)

    async def test_close_cancels_inflight_streams(self, make_engine: EngineFactory) -> None:
        """engine.close() ends running streams with finish_reason 'cancelled'."""
        engine = make_engine()
        stream = engine.stream(request(TINY, "go on", max_new_tokens=TINY_CAP))
        await anext(stream)
        await engine.close()
        _, finished = await collect(stream)
        assert finished.finish_reason == "cancelled"
        assert finished.completion_tokens < TINY_CAP


class TestDeadlinesAndQueue:
    async def test_deadline_ends_with_timeout(self, make_engine: EngineFactory) -> None:
        """A request running past deadline_s ends with finish_reason 'timeout'."""
        engine = make_engine()
        await engine.load(TINY)
        _, finished = await collect(
            engine.stream(request(TINY, "go on", max_new_tokens=TINY_CAP, deadline_s=0.05))
        )
        assert finished.finish_reason == "timeout"
        assert finished.completion_tokens < TINY_CAP

    async def test_deadline_while_waiting(self, make_engine: EngineFactory) -> None:
        """A request whose deadline passes in the queue ends with 'timeout' and no tokens."""
        engine = make_engine(max_batch_size=1)
        blocker = engine.stream(request(TINY, "go on", max_new_tokens=TINY_CAP))
        await anext(blocker)
        _, finished = await collect(
            engine.stream(request(TINY, "later", max_new_tokens=4, deadline_s=0.05))
        )
        assert finished.finish_reason == "timeout"
        assert finished.completion_tokens == 0
        assert finished.timings.time_to_first_token_ms is None
        await blocker.aclose()

    async def test_full_queue_fails_at_once(self, make_engine: EngineFactory) -> None:
        """With the batch and the waiting queue full, a new request raises EngineBusy."""
        engine = make_engine(max_batch_size=1, queue_limit=1)
        running = engine.stream(request(TINY, "go on", max_new_tokens=TINY_CAP))
        await anext(running)
        waiting = asyncio.create_task(collect(engine.stream(request(TINY, "next", 4))))
        await wait_until(lambda: engine.load_snapshot(TINY).waiting == 1)
        with pytest.raises(EngineBusy, match="limit 1"):
            await anext(engine.stream(request(TINY, "one too many", 4)))
        await running.aclose()
        _, finished = await waiting
        assert finished.completion_tokens >= 1


class TestRequestsAndPrepare:
    async def test_prepare_is_worst_case(self, make_engine: EngineFactory) -> None:
        """prepare() gives the exact prompt tokens and the bound on completion tokens; the
        prepared request streams as the plain one would."""
        engine = make_engine()
        req = request(TINY, PROMPTS[4], max_new_tokens=30)
        estimate = await engine.prepare(req)
        _, finished = await collect(engine.stream(estimate))
        assert estimate.prompt_tokens == finished.prompt_tokens
        assert estimate.max_completion_tokens == 30 >= finished.completion_tokens
        capped = await engine.prepare(request(TINY, "x", max_new_tokens=10_000))
        assert capped.max_completion_tokens == TINY_CAP

    async def test_a_prepared_request_is_not_tokenized_again(
        self, make_engine: EngineFactory
    ) -> None:
        """prepare() then stream(prepared) encodes the message once (the real tokenizer's
        encode is counted); a plain request streamed alone is encoded once too."""
        engine = make_engine()
        await engine.load(TINY)
        loaded = engine.loaded_model(TINY)
        assert loaded is not None
        tokenizer = loaded.tokenizer
        real_encode = tokenizer.encode_content
        encoded: list[str] = []

        def counting_encode(text: str) -> list[int]:
            encoded.append(text)
            return real_encode(text)

        tokenizer.encode_content = counting_encode  # type: ignore[method-assign]
        prepared = await engine.prepare(request(TINY, "count me", max_new_tokens=3))
        _, finished = await collect(engine.stream(prepared))
        assert encoded == ["count me"]
        assert finished.prompt_tokens == prepared.prompt_tokens
        await collect(engine.stream(request(TINY, "and me", max_new_tokens=3)))
        assert encoded == ["count me", "and me"]

    async def test_estimate_near_context_limit(self, make_engine: EngineFactory) -> None:
        """The completion bound shrinks so prompt + completion fits the context limit."""
        engine = make_engine()
        estimate = await engine.prepare(request(TINY, "y" * 300, max_new_tokens=TINY_CAP))
        assert estimate.prompt_tokens + estimate.max_completion_tokens == TINY_CONTEXT_LIMIT

    async def test_prompt_too_long(self, make_engine: EngineFactory) -> None:
        """A prompt over the context limit is a PromptTooLong error, not a crash."""
        engine = make_engine()
        with pytest.raises(PromptTooLong) as raised:
            await anext(engine.stream(request(TINY, "z" * (TINY_CONTEXT_LIMIT + 10))))
        assert raised.value.context_limit_tokens == TINY_CONTEXT_LIMIT
        assert raised.value.code == "prompt_too_long"

    async def test_message_count_limit(self, make_engine: EngineFactory) -> None:
        """More messages than the configured limit is an InvalidRequest."""
        engine = make_engine(max_prompt_messages=1)
        from inference import ChatMessage, GenerationRequest

        req = GenerationRequest(
            TINY,
            (ChatMessage("user", "a"), ChatMessage("assistant", "b"), ChatMessage("user", "c")),
        )
        with pytest.raises(InvalidRequest, match="at most 1 messages"):
            await engine.prepare(req)

    async def test_duplicate_running_request_id(self, make_engine: EngineFactory) -> None:
        """Two running streams may not share a request_id (cancel() would be ambiguous)."""
        engine = make_engine()
        first = engine.stream(request(TINY, "a", TINY_CAP, request_id="same"))
        await anext(first)
        with pytest.raises(InvalidRequest, match="already running"):
            await anext(engine.stream(request(TINY, "b", 4, request_id="same")))
        await first.aclose()


class TestModelsAndFallback:
    async def test_unknown_model(self, make_engine: EngineFactory) -> None:
        """An id outside the catalog is ModelUnavailable naming the known ids."""
        engine = make_engine()
        with pytest.raises(ModelUnavailable, match="not in the catalog"):
            await anext(engine.stream(request("no-such-model", "hi")))

    async def test_missing_weights_say_how_to_provide(self, make_engine: EngineFactory) -> None:
        """A model whose weights are absent is unavailable with a reason and a remedy."""
        engine = make_engine()
        status = {model.id: model for model in engine.models()}[TINY_MISSING]
        assert not status.available and not status.loaded
        assert status.unavailable_reason and "does not exist" in status.unavailable_reason
        assert status.how_to_provide
        with pytest.raises(ModelUnavailable) as raised:
            await anext(engine.stream(request(TINY_MISSING, "hi")))
        assert raised.value.how_to_provide == status.how_to_provide

    async def test_load_failure_falls_back(self, make_engine: EngineFactory) -> None:
        """A model that fails to load logs model_loading_failed and its fallback answers;
        the final event says which model answered and which one it replaced."""
        engine = make_engine()
        with capture_logs() as logs:
            _, finished = await collect(engine.stream(request(TINY_BROKEN, "hi", 4)))
        assert finished.model_id_answered == TINY
        assert finished.fell_back_from == TINY_BROKEN
        failures = [entry for entry in logs if entry["event"] == "model_loading_failed"]
        assert [entry["model"] for entry in failures] == [TINY_BROKEN]
        status = {model.id: model for model in engine.models()}[TINY_BROKEN]
        assert not status.available and "failed to load" in (status.unavailable_reason or "")
        estimate = await engine.prepare(request(TINY_BROKEN, "hi", 4))
        assert estimate.model_id == TINY

    async def test_concurrent_first_requests_load_once(self, make_engine: EngineFactory) -> None:
        """Concurrent first requests for a model load it exactly once."""
        engine = make_engine()
        with capture_logs() as logs:
            await asyncio.gather(*(engine.prepare(request(TINY, f"hi {i}")) for i in range(4)))
        assert [entry["event"] for entry in logs].count("model_loaded") == 1

    async def test_models_report_loaded_memory(self, make_engine: EngineFactory) -> None:
        """models() shows availability, and memory once loaded."""
        engine = make_engine()
        before = {model.id: model for model in engine.models()}[TINY]
        assert before.available and not before.loaded and before.memory_bytes is None
        await engine.load(TINY)
        after = {model.id: model for model in engine.models()}[TINY]
        assert after.loaded and after.memory_bytes is not None and after.memory_bytes > 0

    async def test_start_loads_models_marked_load_at_start(
        self, tiny_catalog_path, tiny_settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """start() loads models with load_at_start and survives ones that fail."""
        from inference import Engine, load_catalog

        catalog = load_catalog(
            tiny_catalog_path,
            environ={
                "LEDGERCHAT_MODEL_TINY__LOAD_AT_START": "true",
                "LEDGERCHAT_MODEL_TINY_BROKEN__LOAD_AT_START": "true",
            },
        )
        engine = Engine(catalog, tiny_settings)
        try:
            await engine.start()
            statuses = {model.id: model for model in engine.models()}
            assert statuses[TINY].loaded
            assert not statuses[TINY_BROKEN].loaded and not statuses[TINY_BROKEN].available
        finally:
            await engine.close()


class TestEventLoop:
    async def test_loop_stays_responsive_while_generating(self, make_engine: EngineFactory) -> None:
        """Generation runs off the event loop: a ticker on the loop never waits more than a
        small part of the time the streams take (on the loop it would wait all of it)."""
        engine = make_engine(queue_limit=len(PROMPTS))
        await engine.load(TINY)
        lags: list[float] = []
        running = True

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            while running:
                before = loop.time()
                await asyncio.sleep(0.005)
                lags.append(loop.time() - before - 0.005)

        ticking = asyncio.create_task(ticker())
        started = asyncio.get_running_loop().time()
        await asyncio.gather(
            *(collect(engine.stream(request(TINY, text, max_new_tokens=150))) for text in PROMPTS)
        )
        wall_s = asyncio.get_running_loop().time() - started
        running = False
        await ticking
        assert len(lags) >= 10
        assert max(lags) < 0.25 * wall_s
