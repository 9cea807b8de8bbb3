"""Litestar provider of the probes (readiness and the gauges /metrics refreshes), which the
composition root answers because they look at every part of the service."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from litestar.datastructures import State
from litestar.di import Provide

from web.domain.system.schemas import Readiness
from web.settings import Settings


@runtime_checkable
class Probes(Protocol):
    @property
    def settings(self) -> Settings: ...

    async def readiness(self) -> Readiness: ...

    def refresh_gauges(self) -> None: ...


def provide_probes(state: State) -> Probes:
    probes: Probes = state.services
    return probes


SYSTEM_DEPENDENCIES = {"probes": Provide(provide_probes, sync_to_thread=False)}
