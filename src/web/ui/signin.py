"""Sign-in actions: register (errors shown next to the field they concern), login, logout, and
resuming a reloaded tab from its stored refresh token. Password rules, lockout and token
rotation are the accounts service's; this module only presents its answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from web.errors import (
    AlreadyExists,
    LoginLocked,
    NotAuthenticated,
    PermissionDenied,
    RateLimited,
    ServiceError,
    ValidationFailed,
)
from web.services import Services
from web.ui.session import UISession, resume
from web.ui.text import notice_html

REGISTER_FIELDS = ("username", "email", "password", "confirm")
REGISTRATION_CLOSED_TEXT = (
    "Registration is closed on this server. Ask an administrator to create an account for you."
)
INVITE_HELP = "Registration is by invitation: enter the invite code an administrator gave you."


@dataclass(frozen=True)
class FieldErrors:
    """One message per register field; empty strings mean no error."""

    username: str = ""
    email: str = ""
    password: str = ""
    confirm: str = ""

    def html(self) -> tuple[str, str, str, str]:
        return tuple(  # type: ignore[return-value]
            _field_error(getattr(self, name)) for name in REGISTER_FIELDS
        )


def _field_error(message: str) -> str:
    return notice_html("error", message) if message else ""


def client_address(request: gr.Request | None) -> str:
    client = getattr(request, "client", None)
    host = getattr(client, "host", None)
    return str(host) if host else "unknown"


class SignInActions:
    def __init__(self, services: Services) -> None:
        self._services = services

    async def register(
        self,
        username: str,
        email: str,
        password: str,
        confirm: str,
        invite_code: str | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """Create the account and sign in. Returns (4 field errors, form notice, login name).
        The registration mode, invite and per-address limit are the API's."""
        if password != confirm:
            errors = FieldErrors(confirm="The two passwords differ.")
            return (*errors.html(), "", gr.skip())
        try:
            await self._services.registration.sign_up(
                username,
                email,
                password,
                invite_code=(invite_code or "").strip() or None,
                client_address=client_address(request),
            )
        except ValidationFailed as error:
            field = str(error.details.get("field", ""))
            if field in REGISTER_FIELDS:
                errors = FieldErrors(**{field: error.message})
                return (*errors.html(), "", gr.skip())
            return (*FieldErrors().html(), notice_html("error", error.message), gr.skip())
        except (AlreadyExists, PermissionDenied, RateLimited) as error:
            return (*FieldErrors().html(), notice_html("error", error.message), gr.skip())
        return (
            *FieldErrors().html(),
            notice_html("success", "Account created. Sign in with your new password."),
            username.strip(),
        )

    async def login(
        self, session: UISession, username: str, password: str, request: gr.Request
    ) -> tuple[str, str, str]:
        """Returns (login notice, refresh token for browser storage, cleared password)."""
        try:
            tokens = await self._services.accounts.login(
                username, password, client_address(request)
            )
            caller = await self._services.accounts.identity_from_access_token(tokens.access_token)
        except LoginLocked as error:
            message = f"Too many failed sign-ins. Try again in {error.retry_after_s} seconds."
            return notice_html("error", message), gr.skip(), ""
        except NotAuthenticated:
            return notice_html("error", "Wrong username or password."), gr.skip(), ""
        except ServiceError as error:
            return notice_html("error", error.message), gr.skip(), ""
        session.start(tokens, caller)
        return notice_html("info", ""), tokens.refresh_token, ""

    async def resume(self, session: UISession, stored_refresh_token: str) -> Any:
        """On page load: sign back in from browser storage. Returns the new stored token."""
        if session.signed_in or not stored_refresh_token:
            return gr.skip()
        try:
            tokens, caller = await resume(stored_refresh_token, self._services.accounts)
        except NotAuthenticated as error:
            session.end(f"Your session has ended ({error.message}). Please sign in again.")
            return ""
        session.start(tokens, caller)
        return tokens.refresh_token

    async def logout(self, session: UISession) -> str:
        """Revoke this tab's session family; returns the cleared browser token."""
        tokens = session.tokens
        if tokens is not None:
            try:
                caller = await self._services.accounts.identity_from_access_token(
                    tokens.access_token
                )
                await self._services.accounts.logout(caller, tokens.refresh_token)
            except ServiceError:
                pass  # already expired or revoked: signing out locally is all that is left
        session.end("You are signed out.")
        return ""


def stored_token(session: UISession) -> str:
    """The refresh token browser storage should hold now (rotations change it)."""
    return session.tokens.refresh_token if session.tokens is not None else ""
