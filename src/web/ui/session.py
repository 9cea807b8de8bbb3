"""The sign-in state of one browser tab, and turning it into the caller's `Identity`.

A tab keeps its access and refresh tokens in a `UISession` held by Gradio per connection (the
tokens never reach the page as plain text; the refresh token is also kept, encrypted by Gradio,
in the browser's storage so a reload stays signed in). Every UI action asks `identity()`: an
expired access token is refreshed with the rotating refresh token; when that fails too (expired,
revoked, reused) the session ends with a message and the page returns to the sign-in screen.
The rules themselves (token lifetimes, rotation, revocation) live in the accounts service.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from web.domain.accounts.schemas import Identity, TokenPair
from web.errors import NotAuthenticated


class SessionEnded(Exception):
    """The tab is no longer signed in; `message` says why, for the sign-in screen."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TokenAuthority(Protocol):
    """The part of the accounts service a tab's session needs."""

    async def identity_from_access_token(self, token: str) -> Identity: ...

    async def refresh(self, refresh_token: str) -> TokenPair: ...


@dataclass
class UISession:
    """Mutable per-tab state; Gradio hands the same object to every event of the tab."""

    tokens: TokenPair | None = None
    username: str = ""
    is_admin: bool = False
    ended_reason: str = ""
    stop_requested: bool = False
    # Cursors of the transaction pages already shown, for the Previous button.
    history_cursors: list[str | None] = field(default_factory=lambda: [None])
    # Made on first use: Gradio deep-copies the initial value, which a lock cannot survive.
    refresh_lock: asyncio.Lock | None = None

    @property
    def signed_in(self) -> bool:
        return self.tokens is not None

    def start(self, tokens: TokenPair, identity: Identity) -> None:
        self.tokens = tokens
        self.username = identity.username
        self.is_admin = identity.is_admin
        self.ended_reason = ""
        self.stop_requested = False
        self.history_cursors = [None]

    def end(self, reason: str) -> None:
        self.tokens = None
        self.username = ""
        self.is_admin = False
        self.ended_reason = reason
        self.history_cursors = [None]


async def identity(session: UISession, authority: TokenAuthority) -> Identity:
    """The signed-in identity; refreshes once when the access token has expired."""
    tokens = session.tokens
    if tokens is None:
        raise SessionEnded(session.ended_reason or "Please sign in.")
    try:
        return await authority.identity_from_access_token(tokens.access_token)
    except NotAuthenticated:
        pass
    if session.refresh_lock is None:
        session.refresh_lock = asyncio.Lock()
    # Two events of one tab may find the access token expired together; refreshing twice with
    # one refresh token would look like token theft and revoke the session. One refreshes,
    # the other uses its result.
    async with session.refresh_lock:
        try:
            if session.tokens is not None and session.tokens is not tokens:
                return await authority.identity_from_access_token(session.tokens.access_token)
            if session.tokens is None:
                raise SessionEnded(session.ended_reason or "Please sign in.")
            session.tokens = await authority.refresh(tokens.refresh_token)
            return await authority.identity_from_access_token(session.tokens.access_token)
        except NotAuthenticated as exc:
            message = f"Your session has ended ({exc.message}). Please sign in again."
            session.end(message)
            raise SessionEnded(message) from exc


async def resume(refresh_token: str, authority: TokenAuthority) -> tuple[TokenPair, Identity]:
    """Sign a reloaded tab back in from its stored refresh token (rotating it)."""
    tokens = await authority.refresh(refresh_token)
    return tokens, await authority.identity_from_access_token(tokens.access_token)
