"""The real page under the edge's rules, in a real browser against `ledgerchat serve`: it loads,
signs in, chats and exports CSV with the Content-Security-Policy on and no violation in the
console, every Gradio route it uses is on the mount's allow-list, and Gradio's upload route
(which the page never uses) is refused to anyone."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.ui.conftest import TEST_PASSWORD, LiveServer, Shots
from tests.ui.pages import open_account, send, set_sampling, sign_up_and_in, wait_for_footer
from web.ui.mount import gradio_route_allowed

pytestmark = pytest.mark.browser


def test_page_works_under_csp_using_only_allowed_routes(
    page: Page, live_server: LiveServer, shots: Shots, unique_name: Callable[[str], str]
) -> None:
    """Sign in, chat, open the account page and download the CSV export: no CSP violation
    is logged, no request fails, and each Gradio route the page called is allow-listed."""
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    seen: list[tuple[str, str, int]] = []
    page.on(
        "response",
        lambda response: seen.append((response.request.method, response.url, response.status)),
    )
    sign_up_and_in(page, unique_name("csp"), TEST_PASSWORD)
    set_sampling(page, temperature=0, max_tokens=8)
    send(page, "Hello")
    usage = wait_for_footer(page)
    assert usage["cost"] > 0
    open_account(page)
    page.locator("#history-csv").click()
    with page.expect_download() as download:
        page.locator("#csv-file a").first.click()
    assert Path(download.value.path()).read_text(encoding="utf-8").startswith("event_id,")
    shots(page, "after-export")
    violations = [line for line in console if "Content Security Policy" in line]
    assert violations == [], violations
    own = [
        (method, url, status)
        for method, url, status in seen
        if url.startswith(live_server.base_url)
    ]
    failed = [entry for entry in own if entry[2] >= 400]
    assert failed == [], failed
    paths = {
        (method, re.sub(r"^https?://[^/]+", "", url).split("?", 1)[0]) for method, url, _ in own
    }
    gradio = [
        (method, path)
        for method, path in paths
        if not path.startswith(("/api/", "/v1/", "/health", "/ready"))
    ]
    refused = [entry for entry in gradio if not gradio_route_allowed(*entry)]
    assert refused == [], refused
    main = httpx.get(live_server.base_url + "/")
    assert "frame-ancestors 'none'" in main.headers["content-security-policy"]
    expect(page.locator("#lc-balance")).to_be_visible()


def test_upload_and_unused_gradio_routes_are_refused(live_server: LiveServer) -> None:
    """Anonymous uploads and Gradio routes the page does not use answer 404 from the mount."""
    with httpx.Client(base_url=live_server.base_url) as client:
        upload = client.post(
            "/gradio_api/upload", files={"files": ("a.txt", b"x" * 500_000, "text/plain")}
        )
        assert upload.status_code == 404, upload.text
        for path in ("/gradio_api/info", "/gradio_api/openapi.json", "/gradio_api/mcp/sse"):
            assert client.get(path).status_code == 404, path
