"""HTTP handlers of a user's alerts: GET/PUT /api/alerts (thresholds, the notices shown) and
POST /api/alerts/notices/{id}/dismiss."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from web.auth import IDENTITY_DEPENDENCY, SECURITY
from web.bodies import strict_json
from web.domain.accounts.schemas import Identity
from web.domain.alerts.deps import ALERTS_DEPENDENCIES
from web.domain.alerts.service import AlertSettingsUpdate, AlertsService, AlertsView
from web.params import RowId

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
        """The thresholds, the last alert notice, and the notices not dismissed whose
        condition still holds (`notices`)."""
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

    @post("/notices/{notice_id:int}/dismiss", status_code=HTTP_200_OK)
    async def dismiss(
        self,
        identity: NamedDependency[Identity],
        alerts: NamedDependency[AlertsService],
        notice_id: RowId,
    ) -> AlertsView:
        """Hide one notice until its threshold is crossed again (404: not yours)."""
        return await alerts.dismiss(identity, notice_id)
