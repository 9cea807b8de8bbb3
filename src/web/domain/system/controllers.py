"""/health (the process answers), /ready (database, schema, default model) and /metrics
(bearer LEDGERCHAT_METRICS_TOKEN when set, else loopback clients only)."""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST

from web.domain.system.deps import SYSTEM_DEPENDENCIES, Probes
from web.domain.system.schemas import HealthView, ReadyView
from web.metrics import check_metrics_access, render_metrics


@get("/health", tags=["system"])
async def health() -> HealthView:
    """The process is up."""
    return HealthView(status="ok")


@get("/ready", tags=["system"], responses=None, dependencies=SYSTEM_DEPENDENCIES)
async def ready(probes: NamedDependency[Probes]) -> Response[ReadyView]:
    """503 until the database answers, both schemas are current and the default model is
    loaded; while it loads, `loading_percent` says how far it has come."""
    readiness = await probes.readiness()
    return Response(
        ReadyView(
            ready=readiness.ready,
            checks=readiness.checks,
            loading_percent=readiness.loading_percent,
        ),
        status_code=200 if readiness.ready else 503,
    )


@get(
    "/metrics",
    tags=["system"],
    media_type=MediaType.TEXT,
    include_in_schema=False,
    dependencies=SYSTEM_DEPENDENCIES,
)
async def metrics_endpoint(
    request: Request[Any, Any, Any], probes: NamedDependency[Probes]
) -> Response[bytes]:
    """Prometheus text format."""
    check_metrics_access(request.scope, probes.settings.server.metrics_token)
    probes.refresh_gauges()
    return Response(render_metrics(probes.settings.environ), media_type=CONTENT_TYPE_LATEST)
