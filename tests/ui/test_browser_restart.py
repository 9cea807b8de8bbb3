"""A restart of `ledgerchat serve` on the same data directory keeps an open tab signed in: the
signing secret is generated once into `<data_dir>/jwt-secret` and the UI's browser storage is
keyed from it. Deleting that file signs everyone out at the next start (docs/operations.md),
which the same test checks, so it would fail if a start made a new secret every time."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import (
    ARTIFACTS_DIR,
    REPO_ROOT,
    SIGNUP_GRANT_CREDITS,
    STEP_TIMEOUT_MS,
    TEST_PASSWORD,
    TINY_MODEL,
    VIEWPORT,
    Shots,
    _free_port,
    _stop,
    _wait_ready,
)
from tests.ui.pages import sign_up_and_in

pytestmark = [pytest.mark.browser, pytest.mark.live, pytest.mark.slow]


class RestartableServer:
    """`ledgerchat serve` on one data directory and port, started and stopped on demand, with
    no LEDGERCHAT_AUTH_JWT_SECRET: the secret is the one `serve` keeps in the data dir."""

    def __init__(self, data_dir: Path, catalog: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERCHAT_")}
        self.env.update(
            {
                "LEDGERCHAT_DATA_DIR": str(data_dir),
                "LEDGERCHAT_CATALOG": str(catalog),
                "LEDGERCHAT_CHAT_DEFAULT_MODEL": TINY_MODEL,
                "LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS": str(SIGNUP_GRANT_CREDITS),
                "LEDGERCHAT_RATE_LIMIT_PER_ADDRESS_PER_MINUTE": "100000",
                "LEDGERCHAT_AUTH_SIGNUPS_PER_ADDRESS_PER_HOUR": "0",
                "GRADIO_ANALYTICS_ENABLED": "False",
            }
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def secret_file(self) -> Path:
        return self.data_dir / "jwt-secret"

    def start(self) -> None:
        self.starts += 1
        log_path = ARTIFACTS_DIR / f"restart-server-{self.starts}.log"
        with log_path.open("w", encoding="utf-8") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "web.cli", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )
        _wait_ready(self.process, self.base_url, log_path)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


@pytest.fixture
def restartable(ui_catalog: Path, tmp_path: Path) -> Iterator[RestartableServer]:
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    server = RestartableServer(tmp_path / "data", ui_catalog)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def restart_page(browser: Any, restartable: RestartableServer) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT, base_url=restartable.base_url)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def expect_signed_in(page: Page) -> None:
    # A reloaded page restores its session from browser storage: generous on a busy machine.
    expect(page.locator("#chat-input")).to_be_visible(timeout=STEP_TIMEOUT_MS)
    expect(page.locator("#lc-balance [data-available]")).to_be_visible(timeout=STEP_TIMEOUT_MS)
    expect(page.locator("#login-button")).not_to_be_visible()


class TestRestart:
    def test_signed_in_across_a_restart(
        self, restart_page: Page, restartable: RestartableServer, shots: Shots
    ) -> None:
        """Sign in, restart the server on the same data dir, reload: still signed in, with
        the same secret file (0600). Then delete the file and restart: a new secret is made
        and the reloaded tab is back on the sign-in screen."""
        page = restart_page
        sign_up_and_in(page, "restart-ada", TEST_PASSWORD)
        secret = restartable.secret_file.read_bytes()
        assert restartable.secret_file.stat().st_mode & 0o777 == 0o600
        shots(page, "signed-in")

        restartable.stop()
        restartable.start()
        page.reload()
        expect_signed_in(page)
        assert restartable.secret_file.read_bytes() == secret
        shots(page, "still-signed-in-after-restart")

        restartable.stop()
        restartable.secret_file.unlink()
        restartable.start()
        page.reload()
        expect(page.locator("#login-button")).to_be_visible(timeout=STEP_TIMEOUT_MS)
        expect(page.locator("#chat-input")).to_have_count(0)
        assert restartable.secret_file.read_bytes() != secret
        shots(page, "signed-out-after-the-secret-was-deleted")
