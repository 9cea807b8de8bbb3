"""Litestar provider of the billing service."""

from __future__ import annotations

from typing import Protocol

from litestar.datastructures import State
from litestar.di import Provide

from web.domain.billing.services import BillingService


class BillingServices(Protocol):
    @property
    def billing(self) -> BillingService: ...


def provide_billing(state: State) -> BillingService:
    services: BillingServices = state.services
    return services.billing


BILLING_DEPENDENCIES = {"billing": Provide(provide_billing, sync_to_thread=False)}
