"""Litestar provider of the alerts service."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import Provide

from web.domain.alerts.service import AlertsService


def provide_alerts(state: State) -> AlertsService:
    alerts: AlertsService = state.services.alerts
    return alerts


ALERTS_DEPENDENCIES = {"alerts": Provide(provide_alerts, sync_to_thread=False)}
