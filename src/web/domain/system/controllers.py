"""/health (the process answers), /ready (database, schema, default model) and /metrics
(bearer LEDGERCHAT_METRICS_TOKEN when set, else loopback clients only)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from web.metrics import check_metrics_access
from web.services import Services


class HealthView(msgspec.Struct):
    status: str


class ReadyView(msgspec.Struct):
    ready: bool
    checks: dict[str, str]


@get("/health", tags=["system"])
async def health() -> HealthView:
    """The process is up."""
    return HealthView(status="ok")


@get("/ready", tags=["system"], responses=None)
async def ready(services: NamedDependency[Services]) -> Response[ReadyView]:
    """503 until the database answers, both schemas are current and the default model is
    loaded."""
    readiness = await services.readiness()
    return Response(
        ReadyView(ready=readiness.ready, checks=readiness.checks),
        status_code=200 if readiness.ready else 503,
    )


@get("/metrics", tags=["system"], media_type=MediaType.TEXT, include_in_schema=False)
async def metrics_endpoint(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[bytes]:
    """Prometheus text format."""
    check_metrics_access(request.scope, services.settings.server.metrics_token)
    services.refresh_gauges()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
