"""New passwords must not be easy to guess (zxcvbn, with its bundled common-password lists),
over the API and the CLI alike; argon2 work is bounded by a small concurrency limit so that a
burst of logins queues instead of taking every core."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from typing import Any

import pytest

from tests.web.web_testing import PASSWORD, register
from web.cli import main
from web.domain.accounts.passwords import PasswordHashing
from web.settings import AuthSettings

HASH_PROBE_HOLD_S = 0.05


class TestStrength:
    @pytest.mark.parametrize("password", ["password12", "Password123", "qwertyuiop1"])
    async def test_common_passwords_are_refused(self, server, password):
        """Passwords from the common-password lists are refused with 422 on `password`."""
        async with server.client() as client:
            response = await client.post(
                "/api/auth/register",
                json={"username": "amy", "email": "amy@example.com", "password": password},
            )
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["details"]["field"] == "password"
        assert "guess" in error["message"]

    async def test_a_password_made_of_the_users_own_email_is_refused(self, server):
        """The email (a hint zxcvbn is given) does not make a strong password."""
        async with server.client() as client:
            response = await client.post(
                "/api/auth/register",
                json={
                    "username": "amy",
                    "email": "brightwater@example.com",
                    "password": "brightwater1",
                },
            )
        assert response.status_code == 422, response.text

    def test_the_cli_refuses_a_common_password(self, cli_env, capsys, monkeypatch):
        """`ledgerchat user create` applies the same rule (exit 2, message on stderr)."""
        monkeypatch.setattr("sys.stdin", io.StringIO("Password123\n"))
        assert main(["user", "create", "ben", "--email", "b@example.com", "--password-stdin"]) == 2
        assert "guess" in capsys.readouterr().err


class _ConcurrencyProbe:
    """Stands around the real argon2 hasher, counting verifications running at once; each
    is held a moment so that calls which are not bounded would overlap."""

    def __init__(self, hasher: Any) -> None:
        self._hasher = hasher
        self._lock = threading.Lock()
        self._running = 0
        self.most = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hasher, name)

    def verify(self, *args: Any) -> Any:
        with self._lock:
            self._running += 1
            self.most = max(self.most, self._running)
        try:
            time.sleep(HASH_PROBE_HOLD_S)
            return self._hasher.verify(*args)
        finally:
            with self._lock:
                self._running -= 1


class TestHashingConcurrency:
    async def test_argon2_runs_at_most_the_configured_number_at_once(
        self, make_server, make_settings
    ):
        """With LEDGERCHAT_AUTH_MAX_CONCURRENT_PASSWORD_HASHES=1, concurrent logins never run
        two argon2 verifications at the same time. A probe wraps the real hasher and holds
        each call a moment, so that unbounded calls would overlap."""
        server = await make_server(
            make_settings(LEDGERCHAT_AUTH_MAX_CONCURRENT_PASSWORD_HASHES="1")
        )
        async with server.client() as client:
            for name in ("cleo", "dora", "ezra", "finn"):
                await register(client, name)
            passwords = server.services.accounts._passwords
            probe = _ConcurrencyProbe(passwords._hasher)
            passwords._hasher = probe
            responses = await asyncio.gather(
                *(
                    client.post("/api/auth/login", json={"username": name, "password": PASSWORD})
                    for name in ("cleo", "dora", "ezra", "finn") * 2
                )
            )
        assert [r.status_code for r in responses] == [200] * 8
        assert probe.most == 1


class _GatedHasher:
    """Stands around the real argon2 hasher: each verification says it started, then waits
    for `gate` before hashing, and the most that ever ran at once is counted."""

    def __init__(self, hasher: Any) -> None:
        self._hasher = hasher
        self._lock = threading.Lock()
        self._running = 0
        self.most = 0
        self.started = threading.Semaphore(0)
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hasher, name)

    def verify(self, *args: Any) -> Any:
        with self._lock:
            self._running += 1
            self.most = max(self.most, self._running)
        self.started.release()
        try:
            self.gate.wait(timeout=60)
            return self._hasher.verify(*args)
        finally:
            with self._lock:
                self._running -= 1


class TestHashingSlotOfACancelledRequest:
    async def test_the_slot_is_held_until_the_hashing_thread_finishes(self) -> None:
        """A verification whose caller is cancelled (the client left) while its thread still
        hashes keeps its slot until that thread ends; the next one waits for it, so no more
        than the configured number ever hash at once."""
        passwords = PasswordHashing(
            AuthSettings(
                max_concurrent_password_hashes=1, argon2_time_cost=1, argon2_memory_cost_kib=1024
            )
        )
        probe = _GatedHasher(passwords._hasher)
        passwords._hasher = probe
        stored = probe.hash(PASSWORD)
        first = asyncio.create_task(passwords.verify(stored, PASSWORD))
        try:
            assert await asyncio.to_thread(probe.started.acquire, True, 30)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            # The cancelled caller is gone but its thread still hashes: its slot is not free.
            assert passwords._slots.locked()
            second = asyncio.create_task(passwords.verify(stored, PASSWORD))
        finally:
            probe.gate.set()
        assert await asyncio.wait_for(second, 30) is True
        assert probe.most == 1
