"""The engine server's Prometheus metrics, in a registry of their own (one per app, so two
servers in one process, as in tests, do not share counters), served at `/metrics`."""

from __future__ import annotations

from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from inference.engine import Engine


class EngineServerMetrics:
    """Counters of requests, aborts and tokens; gauges of the schedulers' queues."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ledgerchat_engine_requests",
            "Requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.aborted = Counter(
            "ledgerchat_engine_requests_aborted",
            "Generations stopped because their client went away, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.finished = Counter(
            "ledgerchat_engine_generations_finished",
            "Generations that ran to their end, by finish reason.",
            ["finish_reason"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "ledgerchat_engine_prompt_tokens",
            "Prompt tokens of finished generations.",
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "ledgerchat_engine_completion_tokens",
            "Completion tokens of finished generations.",
            registry=self.registry,
        )
        self.running = Gauge(
            "ledgerchat_engine_requests_in_flight",
            "Chat completions being answered now.",
            registry=self.registry,
        )
        self._scheduler_running = Gauge(
            "ledgerchat_engine_scheduler_running",
            "Requests the model's scheduler is decoding now.",
            ["model"],
            registry=self.registry,
        )
        self._scheduler_waiting = Gauge(
            "ledgerchat_engine_scheduler_waiting",
            "Requests waiting in the model's scheduler queue.",
            ["model"],
            registry=self.registry,
        )

    def watch_schedulers(self, engine: Engine, model_ids: tuple[str, ...]) -> None:
        """Read each model's scheduler queue at scrape time."""
        for model_id in model_ids:
            self._scheduler_running.labels(model=model_id).set_function(
                partial(_running, engine, model_id)
            )
            self._scheduler_waiting.labels(model=model_id).set_function(
                partial(_waiting, engine, model_id)
            )

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


def _running(engine: Engine, model_id: str) -> float:
    return float(engine.load_snapshot(model_id).running)


def _waiting(engine: Engine, model_id: str) -> float:
    return float(engine.load_snapshot(model_id).waiting)
