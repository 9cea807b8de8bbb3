"""Prometheus metrics of the service, registered once per process on the default registry.

Gauges that describe current state (active holds, queue depth, model load state, memory) are
refreshed by `refresh_state_gauges` just before /metrics renders, from the live services (and
every few seconds in the background, so that each process's values stay current).
Under `serve --workers N` (PROMETHEUS_MULTIPROC_DIR set for every process) the values live in
files shared by the processes and /metrics renders them all together (`render_metrics`):
counters and histograms summed; gauges by their `multiprocess_mode` (holds, streams, queue and
memory summed over live processes; a model counts as loaded/available only if it is in every
live process).
/metrics tells request rates, model names and memory to whoever reads it: with
LEDGERCHAT_METRICS_TOKEN set it needs that bearer token, without one it answers only clients on
the loopback interface (after X-Forwarded-For from trusted proxies is applied).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping

from litestar.types import Scope
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from web.errors import NotAuthenticated, PermissionDenied

REQUEST_LATENCY_S = Histogram(
    "ledgerchat_http_request_duration_seconds",
    "HTTP request latency until the response finished (streams included).",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TOKENS_GENERATED = Counter(
    "ledgerchat_tokens_generated_total", "Completion tokens generated, by model.", ["model"]
)
PROMPT_TOKENS = Counter(
    "ledgerchat_prompt_tokens_total", "Prompt tokens processed, by model.", ["model"]
)
TOKENS_PER_SECOND = Histogram(
    "ledgerchat_chat_tokens_per_second",
    "Completion tokens per second of each chat stream.",
    ["model"],
    buckets=(1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 250),
)
CHAT_REQUESTS = Counter("ledgerchat_chat_requests_total", "Chat requests by outcome.", ["outcome"])
CREDITS_CHARGED = Counter(
    "ledgerchat_credits_charged_total", "Credits captured for chat answers, by model.", ["model"]
)
LEDGER_OPERATIONS = Counter(
    "ledgerchat_ledger_operations_total", "Ledger commands issued by the service.", ["operation"]
)
LEDGER_FAILURES = Counter(
    "ledgerchat_ledger_failures_total",
    "Ledger commands that raised, by operation and error code.",
    ["operation", "code"],
)
ACTIVE_HOLDS = Gauge(
    "ledgerchat_active_holds",
    "Chat holds placed and not yet resolved.",
    multiprocess_mode="livesum",
)
ACTIVE_STREAMS = Gauge(
    "ledgerchat_active_streams", "Chat streams currently generating.", multiprocess_mode="livesum"
)
QUEUE_DEPTH = Gauge(
    "ledgerchat_inference_queue_depth",
    "Requests waiting in the engine queue.",
    multiprocess_mode="livesum",
)
MODEL_LOADED = Gauge(
    "ledgerchat_model_loaded",
    "1 when the model is loaded, 0 otherwise.",
    ["model"],
    multiprocess_mode="livemin",
)
MODEL_AVAILABLE = Gauge(
    "ledgerchat_model_available",
    "1 when the model can serve requests.",
    ["model"],
    multiprocess_mode="livemin",
)
PROCESS_RSS_BYTES = Gauge(
    "ledgerchat_process_resident_memory_bytes",
    "Resident set size (summed over the web processes).",
    multiprocess_mode="livesum",
)
HOLDS_SWEPT = Counter("ledgerchat_holds_swept_total", "Expired holds released by the sweeper.")
BILLING_OVERHEAD_S = Histogram(
    "ledgerchat_billing_overhead_seconds",
    "Time one chat request spends on billing: idempotency claim, hold, capture or release, "
    "balance and history writes.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def check_metrics_access(scope: Scope, token: str) -> None:
    """Raise unless the request may read /metrics (see the module docstring)."""
    if token:
        given = ""
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                given = value.decode("latin-1")
        scheme, _, presented = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), token.encode()
        ):
            raise NotAuthenticated("/metrics needs the bearer token LEDGERCHAT_METRICS_TOKEN")
        return
    client = scope.get("client")
    try:
        loopback = client is not None and ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        loopback = False
    # A request that came through a proxy is not a local one, whatever address the proxy (or
    # an unparsable X-Forwarded-For that falls back to the proxy's address) makes it look like.
    forwarded = any(name.lower() == b"x-forwarded-for" for name, _ in scope.get("headers", []))
    if not loopback or forwarded:
        raise PermissionDenied(
            "/metrics answers loopback clients only; set LEDGERCHAT_METRICS_TOKEN to scrape it"
            " from elsewhere"
        )


def render_metrics(environ: Mapping[str, str]) -> bytes:
    """The Prometheus text of the whole service: every web process's values when
    PROMETHEUS_MULTIPROC_DIR is set (`serve --workers`), else this process's."""
    folder = environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return bytes(generate_latest(REGISTRY))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return bytes(generate_latest(registry))
