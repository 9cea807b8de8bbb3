"""Budgets of API keys and users: what the limits are (web's `budget_limits` table), the ledger
budgets a chat's hold carries, and what each limit has used (the ledger's `budget_use`).

The ledger enforces them: every chat hold names the spending scopes it belongs to (`user:<id>`,
and `key:<id>` when it came with an API key) with their limits, and the ledger checks those
in the transaction that places the hold. A scope is recorded even while it has no limit, so a
limit set later counts what was spent earlier in its period.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ledger import Budget, BudgetExceeded, Ledger, Period
from web.domain.accounts.schemas import Identity
from web.domain.budgets.schemas import (
    BudgetsView,
    BudgetView,
    CapRequest,
    KeyBudget,
    LimitName,
)
from web.errors import BudgetExhausted, NotFound
from web.logging import get_logger
from web.tables import ApiKeyRow, BudgetLimitRow, UserRow, utc_now

log = get_logger(__name__)

LIMIT_WORDS: dict[str, str] = {
    "key_period": "this API key's {period} budget",
    "key_lifetime": "this API key's lifetime budget",
    "self_cap": "your own {period} spending cap",
    "admin_cap": "the {period} spending cap an admin set for you",
}


def user_scope(user_id: int) -> str:
    return f"user:{user_id}"


def key_scope(key_id: int) -> str:
    return f"key:{key_id}"


@dataclasses.dataclass(frozen=True)
class ChatBudgets:
    """The ledger budgets of one chat hold, and which web limit each one is."""

    budgets: tuple[Budget, ...]
    names: dict[tuple[str, str], LimitName]

    def limited(self) -> tuple[Budget, ...]:
        return tuple(b for b in self.budgets if b.limit is not None)

    def refusal(self, exc: BudgetExceeded, required: int) -> BudgetExhausted:
        """The 402 of a hold the ledger refused for one of these budgets."""
        name = self.names.get((exc.budget_id, exc.period), "key_period")
        words = LIMIT_WORDS[name].format(period=exc.period)
        resets = f"; it resets at {exc.resets_at}" if exc.resets_at else "; it does not reset"
        return BudgetExhausted(
            f"this request may cost up to {required} credits, and {words} has "
            f"{exc.left} of {exc.limit} credits left{resets}",
            limit=name,
            budget_id=exc.budget_id,
            period=exc.period,
            limit_credits=exc.limit,
            left_credits=exc.left,
            required=required,
            resets_at=exc.resets_at,
        )


def chat_budgets(identity: Identity, rows: list[BudgetLimitRow]) -> ChatBudgets:
    """The budgets a hold of `identity` carries, from its limit rows (user's and key's). Of a
    self cap and an admin cap over the same period only the lower is passed: it is the one
    that binds (the lower wins)."""
    names: dict[tuple[str, str], LimitName] = {}
    limits: dict[tuple[str, str], int] = {}
    for row in sorted(rows, key=lambda r: r.kind):  # admin_cap before self_cap on ties
        scope = user_scope(row.subject_id) if row.subject == "user" else key_scope(row.subject_id)
        period = "lifetime" if row.kind == "key_lifetime" else row.period
        key = (scope, period)
        if key not in limits or row.credits < limits[key]:
            limits[key] = row.credits
            names[key] = row.kind  # type: ignore[assignment]
    budgets = [Budget(scope, limit, period) for (scope, period), limit in limits.items()]  # type: ignore[arg-type]
    scopes = [user_scope(identity.user_id)]
    if identity.api_key_id is not None:
        scopes.append(key_scope(identity.api_key_id))
    for scope in scopes:
        if (scope, "lifetime") not in limits:
            budgets.append(Budget(scope, None, "lifetime"))  # recorded, not limited
    return ChatBudgets(tuple(budgets), names)


async def limit_rows(session: AsyncSession, identity: Identity) -> list[BudgetLimitRow]:
    """The limit rows of `identity`'s user and, when it came with one, its API key."""
    condition = and_(
        BudgetLimitRow.subject == "user", BudgetLimitRow.subject_id == identity.user_id
    )
    if identity.api_key_id is not None:
        condition = or_(
            condition,
            and_(BudgetLimitRow.subject == "key", BudgetLimitRow.subject_id == identity.api_key_id),
        )
    return list(await session.scalars(select(BudgetLimitRow).where(condition)))


class BudgetsService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], ledger: Ledger) -> None:
        self._sessions = sessions
        self._ledger = ledger

    async def _rows(self, identity: Identity) -> list[BudgetLimitRow]:
        async with self._sessions() as session:
            return await limit_rows(session, identity)

    async def for_chat(self, identity: Identity) -> ChatBudgets:
        return chat_budgets(identity, await self._rows(identity))

    async def for_chat_in(self, session: AsyncSession, identity: Identity) -> ChatBudgets:
        """`for_chat` read in the caller's session (a chat's claim shares its transaction)."""
        return chat_budgets(identity, await limit_rows(session, identity))

    async def left_credits(self, identity: Identity, budgets: ChatBudgets) -> int | None:
        """The least any limited budget has left now (None: no limit applies)."""
        lefts = []
        for budget in budgets.limited():
            use = await self._ledger.budget_use(identity.account_id, budget)
            if use.left is not None:
                lefts.append(use.left)
        return min(lefts) if lefts else None

    # -- setting limits ------------------------------------------------------------------

    async def set_key_budget(
        self, identity: Identity, key_id: int, budget: KeyBudget | None
    ) -> None:
        """Replace the key's limits (None clears them); the key must be the caller's."""
        async with self._sessions() as session:
            key = await session.get(ApiKeyRow, key_id)
            if key is None or key.user_id != identity.user_id:
                raise NotFound(f"API key {key_id} does not exist")
            await session.execute(
                delete(BudgetLimitRow).where(
                    BudgetLimitRow.subject == "key", BudgetLimitRow.subject_id == key_id
                )
            )
            if budget is not None:
                if budget.period_credits is not None:
                    session.add(
                        _row(
                            "key",
                            key_id,
                            "key_period",
                            budget.period,
                            budget.period_credits,
                            identity.user_id,
                        )
                    )
                if budget.lifetime_credits is not None:
                    session.add(
                        _row(
                            "key",
                            key_id,
                            "key_lifetime",
                            "lifetime",
                            budget.lifetime_credits,
                            identity.user_id,
                        )
                    )
            await session.commit()
        log.info("key_budget_set", user_id=identity.user_id, key_id=key_id, cleared=budget is None)

    async def set_cap(
        self, actor: Identity, user_id: int, kind: LimitName, cap: CapRequest | None
    ) -> None:
        """Set or clear (None) a user's `self_cap` or `admin_cap`."""
        async with self._sessions() as session:
            if await session.get(UserRow, user_id) is None:
                raise NotFound(f"user {user_id} does not exist")
            await session.execute(
                delete(BudgetLimitRow).where(
                    BudgetLimitRow.subject == "user",
                    BudgetLimitRow.subject_id == user_id,
                    BudgetLimitRow.kind == kind,
                )
            )
            if cap is not None:
                session.add(_row("user", user_id, kind, cap.period, cap.credits, actor.user_id))
            await session.commit()
        log.info(
            "spending_cap_set",
            actor_id=actor.user_id,
            user_id=user_id,
            kind=kind,
            cleared=cap is None,
        )

    async def set_own_cap(self, identity: Identity, cap: CapRequest | None) -> BudgetsView:
        """Set or clear (None) the caller's own cap; the caller's budgets after."""
        await self.set_cap(identity, identity.user_id, "self_cap", cap)
        return await self.views(identity, with_keys=True)

    async def set_admin_cap(
        self, admin: Identity, user_id: int, cap: CapRequest | None
    ) -> BudgetsView:
        """Set or clear (None) an admin's cap on a user; that user's caps after."""
        await self.set_cap(admin, user_id, "admin_cap", cap)
        return await self.caps_of(user_id)

    # -- reading -------------------------------------------------------------------------

    async def views(self, identity: Identity, *, with_keys: bool = False) -> BudgetsView:
        """The caller's caps (and its API keys' limits) with what each used."""
        return await self._views(identity.user_id, identity.account_id, with_keys)

    async def caps_of(self, user_id: int) -> BudgetsView:
        """A user's caps with what each used (for an admin)."""
        async with self._sessions() as session:
            user = await session.get(UserRow, user_id)
        if user is None or user.account_id is None:
            raise NotFound(f"user {user_id} does not exist")
        return await self._views(user_id, user.account_id, False)

    async def _views(self, user_id: int, account_id: str, with_keys: bool) -> BudgetsView:
        condition = and_(BudgetLimitRow.subject == "user", BudgetLimitRow.subject_id == user_id)
        if with_keys:
            keys = select(ApiKeyRow.id).where(ApiKeyRow.user_id == user_id)
            condition = or_(
                condition,
                and_(BudgetLimitRow.subject == "key", BudgetLimitRow.subject_id.in_(keys)),
            )
        async with self._sessions() as session:
            query = select(BudgetLimitRow).where(condition).order_by(BudgetLimitRow.id)
            rows = list(await session.scalars(query))
        return BudgetsView(budgets=[await self._view(account_id, row) for row in rows])

    async def _view(self, account_id: str, row: BudgetLimitRow) -> BudgetView:
        scope = user_scope(row.subject_id) if row.subject == "user" else key_scope(row.subject_id)
        period: Period = "lifetime" if row.kind == "key_lifetime" else row.period  # type: ignore[assignment]
        use = await self._ledger.budget_use(account_id, Budget(scope, row.credits, period))
        return BudgetView(
            limit=row.kind,  # type: ignore[arg-type]
            budget_id=scope,
            period=period,
            limit_credits=row.credits,
            used_credits=use.used,
            left_credits=use.left or 0,
            resets_at=use.resets_at,
            key_id=row.subject_id if row.subject == "key" else None,
        )


def _row(
    subject: str, subject_id: int, kind: str, period: str, credits: int, actor_id: int
) -> BudgetLimitRow:
    return BudgetLimitRow(
        subject=subject,
        subject_id=subject_id,
        kind=kind,
        period=period,
        credits=credits,
        set_by_user_id=actor_id,
        updated_at=utc_now(),
    )
