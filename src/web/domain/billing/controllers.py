"""HTTP handlers of money reads: /api/balance, /api/history, /api/transactions, /api/usage."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from web.auth import IDENTITY_DEPENDENCY, SECURITY
from web.domain.accounts.schemas import Identity
from web.domain.billing.deps import BILLING_DEPENDENCIES
from web.domain.billing.history import HistoryPage
from web.domain.billing.schemas import TransactionsPage, UsageReport
from web.domain.billing.services import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, BillingService
from web.domain.chat.schemas import BalanceView

DEPENDENCIES = {**IDENTITY_DEPENDENCY, **BILLING_DEPENDENCIES}


class BillingController(Controller):
    path = "/api"
    tags = ("billing",)
    dependencies = DEPENDENCIES
    security = SECURITY

    @get("/balance")
    async def balance(
        self, identity: NamedDependency[Identity], billing: NamedDependency[BillingService]
    ) -> BalanceView:
        """Posted credits, credits held by running chats, and what is available."""
        return await billing.balance(identity)

    @get("/history")
    async def history(
        self,
        identity: NamedDependency[Identity],
        billing: NamedDependency[BillingService],
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    ) -> HistoryPage:
        """One item per chat reply (pending while its hold is open; the released rest folded
        in), top-up, refund or charge, newest first. The raw events are /api/transactions."""
        return await billing.history(identity, cursor=cursor, limit=limit)

    @get(
        "/transactions",
        responses=None,
    )
    async def transactions(
        self,
        identity: NamedDependency[Identity],
        billing: NamedDependency[BillingService],
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        transaction_type: Annotated[
            list[str] | None, QueryParameter(name="type", max_items=6)
        ] = None,
        since: FromQuery[dt.datetime | None] = None,
        until: FromQuery[dt.datetime | None] = None,
        output_format: Annotated[Literal["json", "csv"], QueryParameter(name="format")] = "json",
    ) -> Response[TransactionsPage | str]:
        """Newest first, one page per cursor; `format=csv` exports every matching row."""
        since, until = _aware(since), _aware(until)
        if output_format == "csv":
            body = await billing.transactions_csv(
                identity, types=transaction_type, since=since, until=until
            )
            return Response(
                body,
                media_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="transactions.csv"'},
            )
        page = await billing.transactions(
            identity, cursor=cursor, limit=limit, types=transaction_type, since=since, until=until
        )
        return Response(page)

    @get("/usage")
    async def usage(
        self,
        identity: NamedDependency[Identity],
        billing: NamedDependency[BillingService],
        since: FromQuery[dt.date | None] = None,
        until: FromQuery[dt.date | None] = None,
    ) -> UsageReport:
        """Requests, tokens and credits per day and model (UTC days, default last 30)."""
        return await billing.usage(identity, since=since, until=until)


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=dt.UTC)
