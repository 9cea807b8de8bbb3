"""Litestar provider of the budgets service."""

from __future__ import annotations

from typing import Protocol

from litestar.datastructures import State
from litestar.di import Provide

from web.domain.budgets.services import BudgetsService


class BudgetsServices(Protocol):
    @property
    def budgets(self) -> BudgetsService: ...


def provide_budgets(state: State) -> BudgetsService:
    services: BudgetsServices = state.services
    return services.budgets


BUDGETS_DEPENDENCIES = {"budgets": Provide(provide_budgets, sync_to_thread=False)}
