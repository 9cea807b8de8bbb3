"""API keys: stored as SHA-256 of the secret, bounded per user, revocable."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from web.domain.accounts.rules import identity_of
from web.domain.accounts.schemas import Identity
from web.domain.accounts.tokens import API_KEY_SHOWN_PREFIX_CHARS, new_api_key, token_hash
from web.domain.keys.schemas import ApiKeyView, CreatedApiKey
from web.errors import NotAuthenticated, NotFound, PermissionDenied, ValidationFailed
from web.logging import get_logger
from web.settings import API_KEY_SCOPES, AuthSettings
from web.tables import ApiKeyRow, UserRow, utc_now

log = get_logger(__name__)


def key_view(row: ApiKeyRow) -> ApiKeyView:
    return ApiKeyView(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        scopes=row.scopes.split(),
    )


def check_signed_in(identity: Identity) -> None:
    """Keys are managed with a password session only: a leaked key must not mint keys that
    outlive its own revocation."""
    if not identity.is_session:
        raise PermissionDenied("managing API keys needs a signed-in session, not an API key")


def scopes_text(scopes: Sequence[str] | None, default: str) -> str:
    chosen = default.split() if scopes is None else scopes
    unknown = sorted(set(chosen) - set(API_KEY_SCOPES))
    if not chosen or unknown:
        raise ValidationFailed(
            f"scopes must be one or more of {', '.join(API_KEY_SCOPES)}", field="scopes"
        )
    # Stored in a fixed order, once each.
    return " ".join(scope for scope in API_KEY_SCOPES if scope in chosen)


class ApiKeysService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], auth: AuthSettings) -> None:
        self._sessions = sessions
        self._auth = auth

    async def create(
        self, identity: Identity, name: str, scopes: Sequence[str] | None = None
    ) -> CreatedApiKey:
        check_signed_in(identity)
        stored_scopes = scopes_text(scopes, self._auth.api_key_default_scopes)
        name = name.strip()
        if not 1 <= len(name) <= 100:
            raise ValidationFailed("key name must be 1-100 characters", field="name")
        if not name.isprintable():
            raise ValidationFailed("key name must not contain control characters", field="name")
        secret = new_api_key()
        async with self._sessions() as session:
            active = await session.scalar(
                select(func.count())
                .select_from(ApiKeyRow)
                .where(ApiKeyRow.user_id == identity.user_id, ApiKeyRow.revoked_at.is_(None))
            )
            if (active or 0) >= self._auth.max_api_keys_per_user:
                raise ValidationFailed(
                    f"at most {self._auth.max_api_keys_per_user} active API keys per user"
                )
            row = ApiKeyRow(
                user_id=identity.user_id,
                name=name,
                prefix=secret[:API_KEY_SHOWN_PREFIX_CHARS],
                key_hash=token_hash(secret),
                scopes=stored_scopes,
            )
            session.add(row)
            await session.commit()
        log.info("api_key_created", user_id=identity.user_id, key_id=row.id)
        return CreatedApiKey(key=key_view(row), secret=secret)

    async def list(self, identity: Identity) -> list[ApiKeyView]:
        check_signed_in(identity)
        async with self._sessions() as session:
            rows = await session.scalars(
                select(ApiKeyRow)
                .where(ApiKeyRow.user_id == identity.user_id)
                .order_by(ApiKeyRow.id)
                .limit(self._auth.max_api_keys_per_user * 10)
            )
            return [key_view(row) for row in rows]

    async def revoke(self, identity: Identity, key_id: int) -> ApiKeyView:
        check_signed_in(identity)
        async with self._sessions() as session:
            row = await session.get(ApiKeyRow, key_id)
            if row is None or row.user_id != identity.user_id:
                raise NotFound(f"API key {key_id} does not exist")
            if row.revoked_at is None:
                row.revoked_at = utc_now()
            await session.commit()
        log.info("api_key_revoked", user_id=identity.user_id, key_id=key_id)
        return key_view(row)

    async def authenticate(self, secret: str) -> Identity:
        async with self._sessions() as session:
            row = await session.scalar(
                select(ApiKeyRow).where(ApiKeyRow.key_hash == token_hash(secret))
            )
            if row is None or row.revoked_at is not None:
                raise NotAuthenticated("invalid or revoked API key")
            user = await session.get(UserRow, row.user_id)
            if user is None or user.account_id is None or user.disabled_at is not None:
                raise NotAuthenticated("invalid or revoked API key")
            await session.execute(
                update(ApiKeyRow).where(ApiKeyRow.id == row.id).values(last_used_at=utc_now())
            )
            await session.commit()
        return identity_of(user, "api_key", tuple(row.scopes.split()), api_key_id=row.id)
