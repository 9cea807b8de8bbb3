"""The rules a new user's name, email and password must meet, and how a user row becomes a
view or an identity."""

from __future__ import annotations

import re
from typing import Any, cast

from web.domain.accounts.passwords import check_password_strength
from web.domain.accounts.schemas import Identity, Role, UserView
from web.errors import ValidationFailed
from web.settings import AuthSettings
from web.tables import UserRow

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{3,50}$")
EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
MAX_EMAIL_CHARS = 320


def check_username(username: str) -> None:
    if not USERNAME_PATTERN.fullmatch(username):
        raise ValidationFailed(
            "username must be 3-50 characters of letters, digits, '_', '.' or '-'", field="username"
        )


def check_email(email: str) -> None:
    # isprintable() also refuses NUL and invisible format characters (bidi overrides).
    if (
        len(email) > MAX_EMAIL_CHARS
        or not EMAIL_PATTERN.fullmatch(email)
        or not email.isprintable()
    ):
        raise ValidationFailed("email is not a valid address", field="email")


def check_password(password: str, username: str, settings: AuthSettings, email: str = "") -> None:
    """Length bounds, at least one letter and one non-letter, not the username, and not
    easy to guess (zxcvbn, see `passwords`)."""
    if not settings.password_min_length <= len(password) <= settings.password_max_length:
        raise ValidationFailed(
            f"password must be {settings.password_min_length}-{settings.password_max_length} "
            "characters",
            field="password",
        )
    if not any(c.isalpha() for c in password) or all(c.isalpha() for c in password):
        raise ValidationFailed(
            "password needs at least one letter and one digit or symbol", field="password"
        )
    if username.lower() in password.lower():
        raise ValidationFailed("password must not contain the username", field="password")
    hints = [username, *([email, email.split("@", 1)[0]] if email else [])]
    check_password_strength(password, hints, settings.password_min_strength)


def user_view(row: UserRow) -> UserView:
    assert row.account_id is not None, "a user row always gets its ledger account"
    return UserView(
        id=row.id,
        username=row.username,
        email=row.email,
        role=cast(Role, row.role),
        account_id=row.account_id,
        created_at=row.created_at,
        disabled=row.disabled_at is not None,
    )


def identity_of(
    row: UserRow, via: Any, scopes: tuple[str, ...] = (), api_key_id: int | None = None
) -> Identity:
    assert row.account_id is not None
    return Identity(
        user_id=row.id,
        username=row.username,
        role=cast(Role, row.role),
        account_id=row.account_id,
        via=via,
        scopes=scopes,
        api_key_id=api_key_id,
    )
