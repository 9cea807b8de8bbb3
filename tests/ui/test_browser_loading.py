"""A first start's page while the default model is still being prepared: `ledgerchat serve`
answers the page at once, and the chat shows "model loading, N%" by the message box,
refreshing itself, until the model is loaded; a message sent meanwhile is refused with a notice
and costs nothing. The start is held in its preparation by the real conversion lock of its
cache directory (as another process converting into it would), so the window is as long as the
test needs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.inference.tiny_gguf import (
    conversion_lock_held,
    tiny_gguf_catalog_entry,
    write_tiny_gguf,
)
from tests.ui.conftest import (
    ARTIFACTS_DIR,
    REPO_ROOT,
    SERVER_READY_TIMEOUT_S,
    SIGNUP_GRANT_CREDITS,
    STEP_TIMEOUT_MS,
    TEST_PASSWORD,
    VIEWPORT,
    Shots,
    _free_port,
    _stop,
)
from tests.ui.pages import available_balance, send, sign_up_and_in

pytestmark = [pytest.mark.browser, pytest.mark.live, pytest.mark.slow]

GGUF_MODEL = "tiny-gguf"
POLL_S = 0.5
# The conversion and load of the tiny GGUF once released, plus the page's refresh period.
LOADED_TIMEOUT_MS = 120_000
LOADING_NOTICE = re.compile(r"model loading, \d+%")


def _ready_body(base_url: str) -> dict[str, Any] | None:
    """/ready's JSON (200 or 503), or None while the port does not answer."""
    try:
        with urllib.request.urlopen(f"{base_url}/ready", timeout=5) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as exc:
        return dict(json.load(exc))
    except (urllib.error.URLError, OSError):
        return None


class HeldStart:
    """`ledgerchat serve` whose default model is a tiny GGUF that it cannot convert while the
    test holds the cache directory's conversion lock."""

    def __init__(self, tmp_path: Path) -> None:
        gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
        catalog = tmp_path / "catalog.toml"
        catalog.write_text(tiny_gguf_catalog_entry(GGUF_MODEL, gguf_path), encoding="utf-8")
        self.cache_dir = tmp_path / "model-cache"
        self.base_url = f"http://127.0.0.1:{_free_port()}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERCHAT_")}
        self.env.update(
            {
                "LEDGERCHAT_DATA_DIR": str(tmp_path / "data"),
                "LEDGERCHAT_CATALOG": str(catalog),
                "LEDGERCHAT_CHAT_DEFAULT_MODEL": GGUF_MODEL,
                "LEDGERCHAT_INFERENCE_CACHE_DIR": str(self.cache_dir),
                "LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS": str(SIGNUP_GRANT_CREDITS),
                "LEDGERCHAT_AUTH_SIGNUPS_PER_ADDRESS_PER_HOUR": "0",
                "GRADIO_ANALYTICS_ENABLED": "False",
            }
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log_path = ARTIFACTS_DIR / "loading-server.log"
        port = self.base_url.rsplit(":", 1)[1]
        with log_path.open("w", encoding="utf-8") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "web.cli", "serve", "--port", port],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )

    def wait_until_waiting_for_the_conversion(self) -> dict[str, Any]:
        """/ready answers 503 with the default model waiting in its preparation."""
        assert self.process is not None
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        body: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "serve exited during its start"
            body = _ready_body(self.base_url)
            if body is not None and "waiting for another conversion" in str(body["checks"]):
                return body
            time.sleep(POLL_S)
        raise AssertionError(f"the start never waited for the conversion lock: {body}")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


@pytest.fixture
def held_start(tmp_path: Path) -> Iterator[HeldStart]:
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    server = HeldStart(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def loading_page(browser: Any, held_start: HeldStart) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT, base_url=held_start.base_url)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


class TestPageWhileTheModelLoads:
    def test_the_page_shows_the_loading_percentage_until_the_model_is_loaded(
        self, loading_page: Page, held_start: HeldStart, shots: Shots
    ) -> None:
        """Held in its preparation, the service already serves the page: signed in, the
        chat shows "model loading, N%" right above the message box; a message sent then is
        refused with a notice and the balance is unchanged. Released, the notice goes away by
        itself once the model is loaded, the refusal gives way to "loaded and ready", and
        /ready is 200."""
        page = loading_page
        with conversion_lock_held(held_start.cache_dir):
            held_start.start()
            ready = held_start.wait_until_waiting_for_the_conversion()
            assert isinstance(ready["loading_percent"], int)
            sign_up_and_in(page, "early-bird", TEST_PASSWORD)
            notice = page.locator("#model-loading")
            expect(notice).to_contain_text(LOADING_NOTICE)
            expect(notice).to_contain_text(f"{ready['loading_percent']}%")
            notice_box = notice.bounding_box()
            composer_box = page.locator("#lc-composer").bounding_box()
            assert notice_box is not None and composer_box is not None
            gap_px = composer_box["y"] - (notice_box["y"] + notice_box["height"])
            assert 0 <= gap_px <= 40, (notice_box, composer_box)
            shots(page, "model-loading")
            balance = available_balance(page)
            send(page, "Are you there yet?")
            expect(page.locator("#chat-notice")).to_contain_text("still loading")
            expect(page.locator("#chat-notice")).to_contain_text("Nothing was charged")
            assert available_balance(page) == balance
            shots(page, "refused-while-loading")
        expect(page.locator("#model-loading")).to_be_hidden(timeout=LOADED_TIMEOUT_MS)
        expect(page.locator("#chat-notice")).to_contain_text("is loaded and ready")
        shots(page, "loaded")
        body = _ready_body(held_start.base_url)
        assert body is not None and body["ready"] is True, body
