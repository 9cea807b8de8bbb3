"""The Gradio page in a real browser through nginx (deploy/nginx/ledgerchat.conf as shipped) in
front of three web processes with the UI on: sign in, a streamed and billed reply, a reload
that stays signed in and on the same process (the sticky `ledgerchat_route` cookie), and a
switch to another process (another cookie) that keeps the session, since the browser's tokens
are signed with the secret every process shares.

The engine serves the "visible" tiny Gemma (tests/ui), whose greedy replies are letters and
digits, so the browser can watch a reply grow."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Response, expect

from tests.multiproc.cluster import UPSTREAM_HEADER, Cluster
from tests.multiproc.conftest import running_cluster
from tests.multiproc.redis_server import RedisServer
from tests.remote.upstreams import Upstream, start_engine_upstream
from tests.ui.conftest import (
    STEP_TIMEOUT_MS,
    TEST_PASSWORD,
    VIEWPORT,
    browser,
    chromium_executable,
    save_visible_tiny_gemma,
)
from tests.ui.pages import (
    available_balance,
    bot_messages,
    reply_lengths_while_streaming,
    send,
    set_sampling,
    sign_up_and_in,
    wait_for_footer,
    watch_reply,
)

pytestmark = pytest.mark.browser
__all__ = ["browser", "chromium_executable"]  # fixtures from tests/ui, used here by name

GRANT = 100
REPLY_TOKENS = 200
ROUTE_COOKIE = "ledgerchat_route"
COOKIE_TRIES = 64
"""Random cookies tried to find one that nginx hashes to another process (3 processes: the
chance that 64 all land on one is 3 * (1/3)^64)."""


@pytest.fixture(scope="module")
def visible_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    folder = tmp_path_factory.mktemp("visible-engine")
    model_dir = save_visible_tiny_gemma(folder / "visible-tiny")
    upstream = start_engine_upstream(folder / "engine", model_dir)
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture(scope="module")
def ui_cluster(
    redis_server: RedisServer,
    visible_engine: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_unavailable_reason: str | None,
) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("multiproc-ui"),
        visible_engine,
        redis_server,
        postgres_unavailable_reason,
        LEDGERCHAT_UI_ENABLED="true",
        LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS=str(GRANT),
        LEDGERCHAT_CHAT_DEFAULT_MAX_TOKENS=str(REPLY_TOKENS),
        # Every browser request comes from 127.0.0.1 (nginx passes it on).
        LEDGERCHAT_RATE_LIMIT_PER_ADDRESS_PER_MINUTE="100000",
        GRADIO_ANALYTICS_ENABLED="False",
    ) as started:
        yield started


class UpstreamLog:
    """Which web process answered each of the page's Gradio requests (nginx's header)."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str]] = []

    def record(self, response: Response) -> None:
        path = re.sub(r"^https?://[^/]+", "", response.url)
        if path.startswith(("/gradio_api/", "/config")) or path.split("?")[0] == "/":
            upstream = response.headers.get(UPSTREAM_HEADER, "")
            self.answers.append((path, upstream.split(",")[-1].strip()))

    def page_loaded_after(self, mark: int) -> int:
        """Where the page loaded after `mark` begins (its document request): requests the old
        page still had in flight when it was reloaded are not the new page's."""
        for index in range(mark, len(self.answers)):
            if self.answers[index][0].split("?")[0] == "/":
                return index
        raise AssertionError(f"no page load after request {mark}: {self.answers[mark:]}")

    def since(self, start: int) -> set[str]:
        """The processes that answered from the `start`-th request on; at least one of those
        requests was a queue join (an event the page ran), so the set says where events ran."""
        later = self.answers[start:]
        assert any(path.startswith("/gradio_api/queue/join") for path, _ in later), later
        return {upstream for _, upstream in later}


@pytest.fixture
def ui_page(ui_cluster: Cluster, browser: Any) -> Iterator[tuple[Page, UpstreamLog]]:
    # The cluster first: its set-up runs asyncio, which cannot start under Playwright's loop.
    context = browser.new_context(viewport=VIEWPORT, base_url=ui_cluster.url)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    upstreams = UpstreamLog()
    page.on("response", upstreams.record)
    try:
        yield page, upstreams
    finally:
        context.close()


def route_cookie(page: Page) -> str:
    values = [c["value"] for c in page.context.cookies() if c["name"] == ROUTE_COOKIE]
    assert len(values) == 1, page.context.cookies()
    return values[0]


def cookie_for_another_process(cluster: Cluster, current: str) -> tuple[str, str]:
    """A route cookie that nginx sends to a process other than `current`: (value, process)."""
    for _ in range(COOKIE_TRIES):
        value = secrets.token_hex(16)
        response = httpx.get(f"{cluster.url}/robots.txt", cookies={ROUTE_COOKIE: value}, timeout=30)
        answered = response.headers.get(UPSTREAM_HEADER, "").split(",")[-1].strip()
        if answered and answered != current:
            return value, answered
    raise AssertionError(f"every one of {COOKIE_TRIES} random cookies went to {current}")


def expect_signed_in(page: Page) -> None:
    expect(page.locator("#chat-input")).to_be_visible(timeout=STEP_TIMEOUT_MS)
    expect(page.locator("#lc-balance [data-available]")).to_be_visible(timeout=STEP_TIMEOUT_MS)
    expect(page.locator("#login-button")).not_to_be_visible()


def chat_and_check_footer(page: Page, message: str) -> dict[str, int]:
    """Send one message; the reply grows while it streams and ends with its cost line."""
    before = bot_messages(page).count()
    watch_reply(page)
    send(page, message)
    lengths = reply_lengths_while_streaming(page, timeout_s=120)
    footer = wait_for_footer(page)
    assert bot_messages(page).count() == before + 1
    growing = sorted({length for length in lengths if length > 0})
    assert len(growing) >= 2, f"the reply did not grow while streaming: {lengths}"
    assert footer["completion"] > 0 and footer["cost"] > 0, footer
    return footer


class TestPageBehindNginx:
    def test_chat_reload_and_process_switch(
        self, ui_page: tuple[Page, UpstreamLog], ui_cluster: Cluster
    ) -> None:
        """Through nginx: sign up and in, a streamed reply with its cost line, every Gradio
        request of the page answered by one process (the one the route cookie names); a reload
        stays signed in on that process; another route cookie moves the browser to another
        process, still signed in, where the next chat is billed from the same balance."""
        page, upstreams = ui_page
        sign_up_and_in(page, f"mpui{secrets.token_hex(3)}", TEST_PASSWORD)
        cookie = route_cookie(page)
        set_sampling(page, 0, REPLY_TOKENS)
        first = chat_and_check_footer(page, "Hello from behind nginx")
        assert available_balance(page) == GRANT - first["cost"]
        sticky = upstreams.since(1)  # the first page load came before the cookie existed
        assert len(sticky) == 1, upstreams.answers
        (process,) = sticky

        mark = len(upstreams.answers)
        page.reload()
        expect_signed_in(page)
        assert route_cookie(page) == cookie
        mark = upstreams.page_loaded_after(mark)
        assert upstreams.since(mark) == {process}, upstreams.answers[mark:]
        expect(page.locator("#lc-balance [data-available]")).to_have_attribute(
            "data-available", str(GRANT - first["cost"])
        )

        value, other = cookie_for_another_process(ui_cluster, process)
        page.context.add_cookies([{"name": ROUTE_COOKIE, "value": value, "url": ui_cluster.url}])
        mark = len(upstreams.answers)
        page.reload()
        expect_signed_in(page)
        set_sampling(page, 0, REPLY_TOKENS)
        second = chat_and_check_footer(page, "Hello again")
        mark = upstreams.page_loaded_after(mark)
        assert upstreams.since(mark) == {other}, upstreams.answers[mark:]
        assert available_balance(page) == GRANT - first["cost"] - second["cost"]
