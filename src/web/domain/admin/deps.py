"""Litestar provider of the admin service."""

from __future__ import annotations

from typing import Protocol

from litestar.datastructures import State
from litestar.di import Provide

from web.domain.admin.services import AdminService


class AdminServices(Protocol):
    @property
    def admin(self) -> AdminService: ...


def provide_admin_service(state: State) -> AdminService:
    services: AdminServices = state.services
    return services.admin


ADMIN_DEPENDENCIES = {"admin_service": Provide(provide_admin_service, sync_to_thread=False)}
