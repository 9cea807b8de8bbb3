"""A tab's sign-in state against the real accounts service on a real database: refresh on an
expired access token, one refresh when two actions race, and an ended session on revocation."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from web.services import Services
from web.ui.session import SessionEnded, UISession, identity

PASSWORD = "correct-horse-42"


async def _signed_in(services: Services, username: str) -> UISession:
    await services.accounts.register(username, f"{username}@example.com", PASSWORD)
    tokens = await services.accounts.login(username, PASSWORD, "127.0.0.1")
    session = UISession()
    session.start(tokens, await services.accounts.identity_from_access_token(tokens.access_token))
    return session


def _expire_access_token(session: UISession) -> None:
    assert session.tokens is not None
    session.tokens = msgspec.structs.replace(session.tokens, access_token="expired.token.here")


class TestIdentity:
    async def test_valid_access_token_gives_the_identity(self, services: Services) -> None:
        session = await _signed_in(services, "ada")
        assert (await identity(session, services.accounts)).username == "ada"

    async def test_expired_access_token_is_refreshed_and_rotated(self, services: Services) -> None:
        """The refresh token rotates; the new pair is kept for the next action."""
        session = await _signed_in(services, "bob")
        assert session.tokens is not None
        old_refresh = session.tokens.refresh_token
        _expire_access_token(session)
        assert (await identity(session, services.accounts)).username == "bob"
        assert session.tokens is not None and session.tokens.refresh_token != old_refresh
        assert (await identity(session, services.accounts)).username == "bob"

    async def test_two_actions_racing_on_an_expired_token_refresh_once(
        self, services: Services
    ) -> None:
        """Refreshing twice with one token would trip reuse detection and revoke the session."""
        session = await _signed_in(services, "cyd")
        _expire_access_token(session)
        first, second = await asyncio.gather(
            identity(session, services.accounts), identity(session, services.accounts)
        )
        assert first.username == second.username == "cyd"
        assert session.signed_in
        assert session.tokens is not None
        await services.accounts.refresh(session.tokens.refresh_token)  # still a live family

    async def test_revoked_session_ends_with_a_message(self, services: Services) -> None:
        """After logout elsewhere, the next refresh fails and the tab is signed out."""
        session = await _signed_in(services, "dee")
        assert session.tokens is not None
        caller = await services.accounts.identity_from_access_token(session.tokens.access_token)
        await services.accounts.logout(caller, session.tokens.refresh_token)
        _expire_access_token(session)
        with pytest.raises(SessionEnded) as ended:
            await identity(session, services.accounts)
        assert "session has ended" in ended.value.message
        assert not session.signed_in
        assert session.ended_reason == ended.value.message

    async def test_signed_out_tab_is_asked_to_sign_in(self, services: Services) -> None:
        with pytest.raises(SessionEnded, match="sign in"):
            await identity(UISession(), services.accounts)
