"""The ledger side of a chat: place the worst-case hold, then capture or release it, with
bounded retries of LedgerBusy (idempotency keys make a retry replay, never apply twice). The
receipts carry the balance after each command, so no separate balance read is needed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ledger import Ledger
from ledger.errors import BudgetExceeded, InsufficientCredits, LedgerBusy
from ledger.models import Receipt
from web import metrics
from web.domain.accounts.schemas import Identity
from web.domain.billing.prices import ModelPrice
from web.domain.budgets.services import ChatBudgets
from web.domain.chat.pricing import price_as_dict
from web.domain.chat.schemas import BalanceView
from web.errors import CreditsExhausted
from web.ledger_calls import counted

LEDGER_BUSY_ATTEMPTS = 3
LEDGER_BUSY_BACKOFF_S = 0.2


class ChatHolds:
    """Holds of chat requests on one ledger; keys are derived from the request id."""

    def __init__(self, ledger: Ledger, hold_ttl_s: float) -> None:
        self._ledger = ledger
        self._hold_ttl_s = hold_ttl_s

    async def place(
        self,
        identity: Identity,
        request_id: str,
        credits: int,
        model_id: str,
        price: ModelPrice,
        budgets: ChatBudgets | None = None,
    ) -> str:
        """Hold `credits` for the request; CreditsExhausted (402) when they are not available,
        BudgetExhausted (402) when a budget would pass its limit (checked by the ledger in the
        same transaction). The hold records the model and the price version it was placed
        under (receipts and audits can tell which price a hold, and its capture, belong to)."""
        try:
            async with counted("place_hold"):
                receipt = await self._ledger.place_hold(
                    identity.account_id,
                    credits,
                    ttl_s=self._hold_ttl_s,
                    purpose="chat",
                    reference=request_id,
                    idempotency_key=f"chat:{request_id}:hold",
                    metadata={"model": model_id, "price_version": price.version},
                    budgets=None if budgets is None else budgets.budgets,
                )
        except InsufficientCredits as exc:
            metrics.CHAT_REQUESTS.labels("insufficient_credits").inc()
            raise CreditsExhausted(
                f"this request may cost up to {credits} credits; {exc.available} available",
                available=exc.available,
                required=credits,
                price=price_as_dict(price),
            ) from exc
        except BudgetExceeded as exc:
            metrics.CHAT_REQUESTS.labels("budget_exceeded").inc()
            assert budgets is not None  # the ledger only checks budgets it was given
            raise budgets.refusal(exc, credits) from exc
        metrics.ACTIVE_HOLDS.inc()
        return str(receipt.hold_id)

    async def capture(
        self,
        identity: Identity,
        request_id: str,
        hold_id: str,
        credits: int,
        metadata: dict[str, str | int],
    ) -> BalanceView:
        """Capture `credits` of the hold (the rest is released in the same event)."""
        return await self._resolve(
            "capture_hold",
            lambda: self._ledger.capture_hold(
                identity.account_id,
                hold_id,
                credits,
                idempotency_key=f"chat:{request_id}:capture",
                metadata={**metadata, "request_id": request_id},
            ),
        )

    async def release(
        self, identity: Identity, request_id: str, hold_id: str, reason: str
    ) -> BalanceView:
        """Release the whole hold, saying why."""
        return await self._resolve(
            "release_hold",
            lambda: self._ledger.release_hold(
                identity.account_id,
                hold_id,
                reason=reason,
                idempotency_key=f"chat:{request_id}:release",
            ),
        )

    async def balance(self, identity: Identity) -> BalanceView:
        async with counted("balance"):
            balance = await self._ledger.balance(identity.account_id)
        return BalanceView(posted=balance.posted, held=balance.held, available=balance.available)

    async def _resolve(
        self, operation: str, command: Callable[[], Awaitable[Receipt]]
    ) -> BalanceView:
        """Run the capture or release of a chat's hold, retrying LedgerBusy a bounded number
        of times: the command may have committed anyway, and its idempotency key replays it,
        or applies it now, never twice."""
        try:
            for attempt in range(1, LEDGER_BUSY_ATTEMPTS + 1):
                try:
                    async with counted(operation):
                        receipt = await command()
                    balance = receipt.balance
                    return BalanceView(
                        posted=balance.posted, held=balance.held, available=balance.available
                    )
                except LedgerBusy:
                    if attempt == LEDGER_BUSY_ATTEMPTS:
                        raise
                    await asyncio.sleep(LEDGER_BUSY_BACKOFF_S * attempt)
            raise AssertionError("unreachable: the last attempt returns or raises")
        finally:
            # Captured, released, refused or unknown: this service no longer holds it (an
            # unresolved hold expires and the sweeper releases it).
            metrics.ACTIVE_HOLDS.dec()
