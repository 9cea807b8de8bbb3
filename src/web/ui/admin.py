"""The admin page's actions: users with balances, a top-up form, disabling and enabling
users, invite codes and the ledger audit. The admin service checks the role on every call; the
page is only shown to admins as a courtesy.
"""

from __future__ import annotations

import uuid
from typing import Any

import gradio as gr

from web.errors import ServiceError
from web.services import Services
from web.ui.account import audit_html
from web.ui.session import SessionEnded, UISession, identity
from web.ui.text import credits_label, notice_html

USER_COLUMNS = ["Id", "Username", "Email", "Role", "Disabled", "Posted", "Held", "Available"]


class AdminActions:
    def __init__(self, services: Services) -> None:
        self._services = services

    async def users(self, session: UISession) -> tuple[Any, Any, str]:
        """Returns (users table, top-up user choices, notice)."""
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

    async def top_up(
        self, session: UISession, user_id: Any, amount: Any, note: str, request_key: str
    ) -> tuple[Any, str, str]:
        """Add credits. `request_key` is made when the form is shown, so a double click or a
        retry of the same form adds the credits once. Returns (users, notice, new key)."""
        try:
            caller = await identity(session, self._services.accounts)
            if user_id in (None, ""):
                return gr.skip(), notice_html("error", "Choose a user."), request_key
            amount_value = float(amount)
            if not amount_value.is_integer():
                return gr.skip(), notice_html("error", "Amount must be whole credits."), request_key
            result = await self._services.admin.top_up(
                caller,
                int(user_id),
                int(amount_value),
                idempotency_key=request_key,
                note=note.strip() or "admin top-up",
            )
        except SessionEnded as ended:
            return gr.skip(), notice_html("error", ended.message), request_key
        except (TypeError, ValueError):
            return gr.skip(), notice_html("error", "Amount must be a number."), request_key
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
        try:
            caller = await identity(session, self._services.accounts)
            if user_id in (None, ""):
                return gr.skip(), notice_html("error", "Choose a user.")
            if disable:
                user = await self._services.admin.disable(caller, int(user_id))
                done = f"Disabled {user.username}: their sessions and API keys are revoked."
            else:
                user = await self._services.admin.enable(caller, int(user_id))
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

    async def create_invite(self, session: UISession, note: str) -> tuple[str, str]:
        """A single-use invite code with the default lifetime. Returns (code, notice)."""
        try:
            caller = await identity(session, self._services.accounts)
            created = await self._services.admin.create_invite(caller, note=note.strip())
        except SessionEnded as ended:
            return gr.skip(), notice_html("error", ended.message)
        except ServiceError as error:
            return gr.skip(), notice_html("error", error.message)
        expires = created.invite.expires_at
        until = f", valid until {expires:%Y-%m-%d %H:%M} UTC" if expires else ""
        return created.code, notice_html("success", f"Invite created (single use{until}).")

    async def audit(self, session: UISession) -> tuple[Any, str]:
        """Returns (report HTML, notice)."""
        try:
            caller = await identity(session, self._services.accounts)
            result = await self._services.admin.audit(caller)
        except SessionEnded as ended:
            return gr.skip(), notice_html("error", ended.message)
        except ServiceError as error:
            return gr.skip(), notice_html("error", error.message)
        return audit_html(result.clean, result.report), notice_html("info", "")


def new_request_key() -> str:
    return f"ui-topup-{uuid.uuid4()}"
