"""Litestar providers of the accounts context's services (litestar-fullstack's
`domain/accounts/deps.py`): handlers get the one service they call, not the container."""

from __future__ import annotations

from typing import Protocol

from litestar.datastructures import State
from litestar.di import Provide

from web.domain.accounts.registration import RegistrationService
from web.domain.accounts.services import AccountsService


class AccountsServices(Protocol):
    @property
    def accounts(self) -> AccountsService: ...

    @property
    def registration(self) -> RegistrationService: ...


def provide_accounts(state: State) -> AccountsService:
    services: AccountsServices = state.services
    return services.accounts


def provide_registration(state: State) -> RegistrationService:
    services: AccountsServices = state.services
    return services.registration


ACCOUNTS_DEPENDENCIES = {
    "accounts": Provide(provide_accounts, sync_to_thread=False),
    "registration": Provide(provide_registration, sync_to_thread=False),
}
