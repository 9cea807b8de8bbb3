"""A server process killed with SIGKILL in the middle of a stream leaves its hold behind; after
a restart the sweeper releases it once it expires, no credit is lost and the audit is clean."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ledger import Ledger
from tests.web.conftest import FAST_HASHING, TINY, TINY_CAP
from tests.web.web_testing import free_port, signed_in, sse_events

pytestmark = [pytest.mark.slow, pytest.mark.live]

# Long enough that the first delta arrives before the generation deadline (3/4 of it) on a busy
# machine (its deadline is 15 s after the request), short enough to wait for its expiry.
HOLD_TTL_S = 20
RETRIED_KEY = "crash-retry-1"
# Greedy, so its first delta comes at once and no sampled <eos> ends it before the kill; the
# retry under the same Idempotency-Key must send the same body.
LONG_GREEDY_CHAT = {"message": "go on", "sampling": {"max_tokens": TINY_CAP, "temperature": 0}}
READY_TIMEOUT_S = 120.0
# The SIGTERM test's hold: long, so that the generation deadline it implies (minus its
# margin, and capped by the engine's default deadline) is minutes away and only the
# shutdown's grace can end the stream early. With HOLD_TTL_S the deadline is 9 s after the
# request: a first delta late on a loaded machine let it end the stream before the grace did
# (released as `timeout`, not `cancelled`; a grace over 9 s shows it every time).
SIGTERM_HOLD_TTL_S = 600
SHUTDOWN_GRACE_S = 1
# Waiting for the process to exit after SIGTERM: the grace, uvicorn's settle margin (10 s),
# then closing the services (up to 10 s for streams, 10 s for settlements, 30 s for the
# engine's scheduler), with room for a loaded machine.
EXIT_TIMEOUT_S = 180


class ServerProcess:
    """`python -m web.cli serve` in a child process."""

    def __init__(self, environ: dict[str, str], port: int, log_path: Path) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "web.cli", "serve", "--port", str(port)],
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self) -> None:
        async with (
            httpx.AsyncClient(base_url=self.base_url) as client,
            asyncio.timeout(READY_TIMEOUT_S),
        ):
            while True:
                assert self.process.poll() is None, "server exited during start"
                try:
                    if (await client.get("/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self._log.close()


@pytest.fixture
def server_environ(sqlite_url: str, web_catalog: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEDGERCHAT_")},
        "LEDGERCHAT_DATABASE_URL": sqlite_url,
        "LEDGERCHAT_DATA_DIR": str(tmp_path / "data"),
        "LEDGERCHAT_CATALOG": str(web_catalog),
        "LEDGERCHAT_CHAT_DEFAULT_MODEL": TINY,
        "LEDGERCHAT_INFERENCE_CACHE_DIR": str(tmp_path / "model-cache"),
        "LEDGERCHAT_AUTH_JWT_SECRET": "crash-test-secret-long-enough-for-hs256",
        "LEDGERCHAT_UI_ENABLED": "false",
        "LEDGERCHAT_BILLING_HOLD_TTL_S": str(HOLD_TTL_S),
        "LEDGERCHAT_BILLING_SWEEP_INTERVAL_S": "0.5",
        "LEDGERCHAT_LEDGER_AUDIT_EXPIRED_HOLD_GRACE_S": "60",
        **FAST_HASHING,
    }


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


class TestCrashRecovery:
    async def test_sigkill_mid_stream_then_restart(
        self, server_environ, processes, sqlite_url, tmp_path
    ):
        """SIGKILL during a stream: the hold survives the crash, the restarted server's
        sweeper releases it after expiry (reason `expired`), a retry with the same
        Idempotency-Key then runs once and is charged once, and the audit is clean."""
        port = free_port()
        first = ServerProcess(server_environ, port, tmp_path / "server.log")
        processes.append(first)
        await first.wait_ready()
        async with httpx.AsyncClient(base_url=first.base_url, timeout=60) as client:
            headers = await signed_in(client, "crash")
            async with client.stream(
                "POST",
                "/api/chat",
                json=LONG_GREEDY_CHAT,
                headers={**headers, "Idempotency-Key": RETRIED_KEY},
            ) as response:
                assert response.status_code == 200
                async for event in sse_events(response):
                    if event.event == "delta":
                        first.kill()
                        break

        ledger = await Ledger.open(sqlite_url, run_sweeper=False)
        try:
            account_id = await ledger.open_account("user:1")  # idempotent: the user's account
            crashed = await ledger.balance(account_id)
        finally:
            await ledger.close()
        assert crashed.held > 0, "the killed process had a hold in flight"

        second = ServerProcess(server_environ, port, tmp_path / "server.log")
        processes.append(second)
        await second.wait_ready()
        async with httpx.AsyncClient(base_url=second.base_url, timeout=60) as client:
            login = await client.post(
                "/api/auth/login", json={"username": "crash", "password": "correct horse 42"}
            )
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            async with asyncio.timeout(HOLD_TTL_S + 30):
                while True:
                    balance = (await client.get("/api/balance", headers=headers)).json()
                    if balance["held"] == 0:
                        break
                    await asyncio.sleep(0.25)
            assert balance["posted"] == crashed.posted
            rows = (await client.get("/api/transactions", headers=headers)).json()["transactions"]
            assert rows[0]["type"] == "hold_released"
            assert rows[0]["reason"] == "expired"

            # The crashed attempt moved no credit, so its key is free again once its hold
            # has expired: the retry runs as a new request and is charged exactly once.
            async with client.stream(
                "POST",
                "/api/chat",
                json={"message": "go on", "sampling": {"max_tokens": 2}},
                headers={**headers, "Idempotency-Key": RETRIED_KEY},
            ) as response:
                await response.aread()
                # Another body under the same key is a reuse error, not a retry.
                assert response.status_code == 422
                assert response.json()["error"]["code"] == "idempotency_key_reused"
            async with client.stream(
                "POST",
                "/api/chat",
                json=LONG_GREEDY_CHAT,
                headers={**headers, "Idempotency-Key": RETRIED_KEY},
            ) as response:
                assert response.status_code == 200
                events = [event async for event in sse_events(response)]
            done = events[-1]
            assert done.event == "done", done
            after_retry = (await client.get("/api/balance", headers=headers)).json()
            assert after_retry["posted"] == crashed.posted - done.data["cost_credits"]
            assert after_retry["held"] == 0
        second.stop()

        ledger = await Ledger.open(sqlite_url, run_sweeper=False)
        try:
            report = await ledger.audit()
        finally:
            await ledger.close()
        assert report.clean, report.to_dict()["violations"]


class TestGracefulShutdown:
    async def test_sigterm_mid_stream_finishes_or_releases_the_hold(
        self, server_environ, processes, sqlite_url, tmp_path
    ):
        """SIGTERM while a stream runs: the stream either finishes within the grace period and
        is charged exactly what the client was shown, or is cut when the grace ends and its
        hold is released in full with reason `cancelled`; either way nothing stays held, the
        process shuts down cleanly and the audit is clean."""
        environ = {
            **server_environ,
            "LEDGERCHAT_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
            "LEDGERCHAT_BILLING_HOLD_TTL_S": str(SIGTERM_HOLD_TTL_S),
        }
        server = ServerProcess(environ, free_port(), tmp_path / "server.log")
        processes.append(server)
        await server.wait_ready()
        signalled = False
        async with httpx.AsyncClient(base_url=server.base_url, timeout=EXIT_TIMEOUT_S) as client:
            headers = await signed_in(client, "graceful")
            async with client.stream(
                "POST", "/api/chat", json=LONG_GREEDY_CHAT, headers=headers
            ) as response:
                # Keep reading after the signal: the stream must end by the shutdown, not by
                # this client going away, which is a disconnect and billed as one.
                done = None
                with contextlib.suppress(httpx.HTTPError):
                    async for event in sse_events(response):
                        if event.event == "delta" and not signalled:
                            server.process.send_signal(signal.SIGTERM)
                            signalled = True
                        if event.event == "done":
                            done = event
        assert signalled, "the stream ended before its first delta: no SIGTERM was sent"
        # uvicorn re-raises the signal after its graceful shutdown, so the status is -SIGTERM.
        exit_code = await asyncio.to_thread(server.process.wait, EXIT_TIMEOUT_S)
        assert exit_code in (0, -signal.SIGTERM)
        assert b"services_closed" in (tmp_path / "server.log").read_bytes()

        ledger = await Ledger.open(sqlite_url, run_sweeper=False)
        try:
            account_id = await ledger.open_account("user:1")
            balance = await ledger.balance(account_id)
            page = await ledger.history(account_id, limit=1)
            report = await ledger.audit()
        finally:
            await ledger.close()
        assert balance.held == 0
        if done is not None:
            assert page.entries[0].event_type == "hold_captured"
            assert page.entries[0].amount == done.data["cost_credits"]
        else:
            assert page.entries[0].event_type == "hold_released"
            assert page.entries[0].reason == "cancelled"
        assert report.clean
