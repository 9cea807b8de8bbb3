"""HTTP handlers of a user's alerts: GET/PUT /api/alerts (thresholds and the last notice)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody

from web.auth import IDENTITY_DEPENDENCY, SECURITY
from web.bodies import strict_json
from web.domain.accounts.schemas import Identity
from web.domain.alerts.deps import ALERTS_DEPENDENCIES
from web.domain.alerts.service import AlertSettingsUpdate, AlertsService, AlertsView

DEPENDENCIES = {**IDENTITY_DEPENDENCY, **ALERTS_DEPENDENCIES}


class AlertsController(Controller):
    path = "/api/alerts"
    tags = ("billing",)
    dependencies = DEPENDENCIES
    security = SECURITY

    @get("")
    async def show(
        self, identity: NamedDependency[Identity], alerts: NamedDependency[AlertsService]
    ) -> AlertsView:
        """The thresholds and the last alert notice."""
        return await alerts.get(identity)

    @put("")
    async def change(
        self,
        identity: NamedDependency[Identity],
        alerts: NamedDependency[AlertsService],
        data: JSONBody[AlertSettingsUpdate],
        request: Request[Any, Any, Any],
    ) -> AlertsView:
        """Set both thresholds (null: off)."""
        data = await strict_json(request, AlertSettingsUpdate)
        return await alerts.set(identity, data)
