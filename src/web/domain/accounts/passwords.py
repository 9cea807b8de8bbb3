"""argon2id password hashing with parameters from AuthSettings; hashing runs in a worker
thread because it deliberately costs tens of milliseconds of CPU."""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from web.settings import AuthSettings


class PasswordHashing:
    def __init__(self, settings: AuthSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_cost_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        # Checked against when the named user does not exist, so that answer costs one argon2
        # verification like a wrong password does and timing does not tell which names exist.
        # Made once, here, with the configured parameters (a few tens of ms at most).
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)

    async def verify_absent(self, password: str) -> bool:
        """Spend the time of a real verification for a user that does not exist; always False."""
        await self.verify(self._dummy_hash, password)
        return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the stored hash was made with other parameters than today's settings."""
        return self._hasher.check_needs_rehash(password_hash)
