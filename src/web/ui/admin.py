"""The admin page's actions: users with balances, a top-up form, disabling and enabling
users, invite codes, the models with the operator's detail, and the ledger audit. Forms are
checked here before any service is called; the admin service checks the role on every call
(the page is only shown to admins as a courtesy).
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import gradio as gr

from web.errors import ServiceError
from web.services import Services
from web.ui.account_text import prices_html
from web.ui.audit_view import audit_html
from web.ui.session import SessionEnded, UISession, identity
from web.ui.text import credits_label, notice_html

USER_COLUMNS = ["Id", "Username", "Email", "Role", "Disabled", "Posted", "Held", "Available"]
CHOOSE_USER = "choose a user"
ENTER_CREDITS = "enter the credits to add (a whole number, 1 or more)"


def _sentence(problems: list[str]) -> str:
    text = " and ".join(problems)
    return text[0].upper() + text[1:] + "."


def check_user(user_id: Any) -> int | None:
    """The chosen user's id, or None when none is chosen."""
    if user_id in (None, "") or isinstance(user_id, bool):
        return None
    try:
        return int(user_id)
    except (TypeError, ValueError):
        return None


def check_credits(amount: Any) -> int | None:
    """A whole number of credits, 1 or more, or None."""
    if amount in (None, "") or isinstance(amount, bool):
        return None
    try:
        value = float(amount)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or not value.is_integer() or value < 1:
        return None
    return int(value)


def top_up_problems(user_id: Any, amount: Any) -> list[str]:
    """What is missing or wrong in the top-up form, in the order of its fields."""
    problems = []
    if check_user(user_id) is None:
        problems.append(CHOOSE_USER)
    if check_credits(amount) is None:
        problems.append(ENTER_CREDITS)
    return problems


class AdminActions:
    def __init__(self, services: Services) -> None:
        self._services = services

    async def users(self, session: UISession) -> tuple[Any, Any, str]:
        """Returns (users table, user choices, notice)."""
        try:
            caller = await identity(session, self._services.accounts)
            users = await self._services.admin.users(caller)
        except SessionEnded as ended:
            return gr.skip(), gr.skip(), notice_html("error", ended.message)
        except ServiceError as error:
            return gr.skip(), gr.skip(), notice_html("error", error.message)
        rows = [
            [
                entry.user.id,
                entry.user.username,
                entry.user.email,
                entry.user.role,
                "yes" if entry.user.disabled else "",
                entry.balance.posted,
                entry.balance.held,
                entry.balance.available,
            ]
            for entry in users
        ]
        choices = [(f"{entry.user.username} (#{entry.user.id})", entry.user.id) for entry in users]
        return rows, gr.update(choices=choices), notice_html("info", "")

    async def models(self, session: UISession) -> str:
        """The catalog with prices and, for a model that cannot run, the operator's reason."""
        try:
            caller = await identity(session, self._services.accounts)
        except SessionEnded as ended:
            return notice_html("error", ended.message)
        if not caller.is_admin:
            return ""
        return prices_html(self._services.chat.models(), operator_detail=True)

    async def top_up(
        self, session: UISession, user_id: Any, amount: Any, note: str, request_key: str
    ) -> tuple[Any, str, str]:
        """Add credits. `request_key` is made when the form is shown, so a double click or a
        retry of the same form adds the credits once. Returns (users, notice, new key)."""
        chosen, credits = check_user(user_id), check_credits(amount)
        if chosen is None or credits is None:
            problems = _sentence(top_up_problems(user_id, amount))
            return gr.skip(), notice_html("error", problems), request_key
        try:
            caller = await identity(session, self._services.accounts)
            result = await self._services.admin.top_up(
                caller,
                chosen,
                credits,
                idempotency_key=request_key,
                note=(note or "").strip() or "admin top-up",
            )
        except SessionEnded as ended:
            return gr.skip(), notice_html("error", ended.message), request_key
        except ServiceError as error:
            return gr.skip(), notice_html("error", error.message), request_key
        rows, _, _ = await self.users(session)
        return (
            rows,
            notice_html(
                "success",
                f"Added {credits_label(result.amount)}; user #{result.user_id} now has "
                f"{credits_label(result.balance.available)} available.",
            ),
            new_request_key(),
        )

    async def set_disabled(
        self, session: UISession, user_id: Any, disable: bool
    ) -> tuple[Any, str]:
        """Disable (sessions and keys revoked) or enable a user. Returns (users, notice)."""
        chosen = check_user(user_id)
        if chosen is None:
            return gr.skip(), notice_html("error", _sentence([CHOOSE_USER]))
        try:
            caller = await identity(session, self._services.accounts)
            if disable:
                user = await self._services.admin.disable(caller, chosen)
                done = f"Disabled {user.username}: their sessions and API keys are revoked."
            else:
                user = await self._services.admin.enable(caller, chosen)
                done = f"Enabled {user.username}; their old API keys stay revoked."
        except SessionEnded as ended:
            return gr.skip(), notice_html("error", ended.message)
        except ServiceError as error:
            return gr.skip(), notice_html("error", error.message)
        rows, _, _ = await self.users(session)
        return rows, notice_html("success", done)

    async def disable(self, session: UISession, user_id: Any) -> tuple[Any, str]:
        return await self.set_disabled(session, user_id, True)

    async def enable(self, session: UISession, user_id: Any) -> tuple[Any, str]:
        return await self.set_disabled(session, user_id, False)

    async def create_invite(self, session: UISession, note: str) -> tuple[Any, str]:
        """A single-use invite code with the default lifetime. Returns (code, notice)."""
        try:
            caller = await identity(session, self._services.accounts)
            created = await self._services.admin.create_invite(caller, note=(note or "").strip())
        except SessionEnded as ended:
            return gr.skip(), notice_html("error", ended.message)
        except ServiceError as error:
            return gr.skip(), notice_html("error", error.message)
        expires = created.invite.expires_at
        until = f", valid until {expires:%Y-%m-%d %H:%M} UTC" if expires else ""
        return created.code, notice_html("success", f"Invite created (single use{until}).")

    async def audit(self, session: UISession) -> str:
        """The report as tables, or why there is none."""
        try:
            caller = await identity(session, self._services.accounts)
            result = await self._services.admin.audit(caller)
        except SessionEnded as ended:
            return notice_html("error", ended.message)
        except ServiceError as error:
            return notice_html("error", error.message)
        return audit_html(result.report)


def new_request_key() -> str:
    return f"ui-topup-{uuid.uuid4()}"
