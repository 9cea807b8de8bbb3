"""argon2id password hashing with parameters from AuthSettings, and the strength check of new
passwords. Hashing runs in a worker thread because it deliberately costs tens of milliseconds
of CPU, and at most `max_concurrent_password_hashes` run at once: a burst of registrations or
logins then queues here instead of taking every core from the requests of other users.

Strength is zxcvbn's estimate (the Dropbox algorithm, PyPI `zxcvbn`), which ships its own
frequency lists of common passwords, words and names, so `password12` and `Password123` are
refused without a hand-kept list.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from zxcvbn import zxcvbn

from web.errors import ValidationFailed
from web.settings import AuthSettings

T = TypeVar("T")
# zxcvbn's run time grows with length; what it finds in the first 100 characters is enough
# (a longer password with a strong start is strong).
STRENGTH_CHECKED_CHARS = 100


def check_password_strength(password: str, hints: list[str], min_score: int) -> None:
    """Refuse a password zxcvbn scores below `min_score` (0-4); `hints` are the user's own
    name and email, which make a password weaker when it contains them."""
    if min_score <= 0:
        return
    estimate = zxcvbn(password[:STRENGTH_CHECKED_CHARS], user_inputs=hints)
    if int(estimate["score"]) < min_score:
        warning = str(estimate["feedback"].get("warning") or "").strip()
        reason = f" ({warning.rstrip('.')})" if warning else ""
        raise ValidationFailed(
            f"password is too easy to guess{reason}; use a longer phrase of uncommon words",
            field="password",
        )


class PasswordHashing:
    def __init__(self, settings: AuthSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_cost_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._slots = asyncio.Semaphore(settings.max_concurrent_password_hashes)
        # Checked against when the named user does not exist, so that answer costs one argon2
        # verification like a wrong password does and timing does not tell which names exist.
        # Made once, here, with the configured parameters (a few tens of ms at most).
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    async def _bounded(self, work: Callable[[], T]) -> T:
        """Run `work` in a thread once a slot is free. The slot is given back when the thread
        finishes, not when the caller stops waiting: a request cancelled mid-hash (the client
        left) cannot free a slot while its thread still hashes, so at most
        `max_concurrent_password_hashes` hashes ever run at once."""
        await self._slots.acquire()
        try:
            hashing = asyncio.ensure_future(asyncio.to_thread(work))
        except BaseException:
            self._slots.release()
            raise
        hashing.add_done_callback(self._slot_freed)
        # Shielded: cancelling the caller leaves the thread's future (and its callback) alone.
        return await asyncio.shield(hashing)

    def _slot_freed(self, hashing: asyncio.Future[Any]) -> None:
        self._slots.release()
        if not hashing.cancelled():
            hashing.exception()  # retrieved: a caller that left no longer waits for it

    async def hash(self, password: str) -> str:
        return await self._bounded(lambda: self._hasher.hash(password))

    async def verify(self, password_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await self._bounded(check)

    async def verify_absent(self, password: str) -> bool:
        """Spend the time of a real verification for a user that does not exist; always False."""
        await self.verify(self._dummy_hash, password)
        return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the stored hash was made with other parameters than today's settings."""
        return self._hasher.check_needs_rehash(password_hash)
