"""Litestar provider of the API keys service."""

from __future__ import annotations

from typing import Protocol

from litestar.datastructures import State
from litestar.di import Provide

from web.domain.keys.services import ApiKeysService


class KeysServices(Protocol):
    @property
    def api_keys(self) -> ApiKeysService: ...


def provide_api_keys(state: State) -> ApiKeysService:
    services: KeysServices = state.services
    return services.api_keys


KEYS_DEPENDENCIES = {"api_keys": Provide(provide_api_keys, sync_to_thread=False)}
