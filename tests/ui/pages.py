"""Page helpers for the browser tests: how to reach each control of the ledgerchat page by the
element ids `web.ui.page` gives them, and how to read back what the page shows."""

from __future__ import annotations

import re
import time
from typing import Any

from playwright.sync_api import Locator, Page, expect

from tests.ui.conftest import TEST_PASSWORD

REPLY_TIMEOUT_MS = 120_000
FILL_ATTEMPTS = 5
FILL_SETTLE_S = 0.3
FOOTER_PATTERN = re.compile(
    r"(?P<cost>[\d,]+) credits? · (?P<prompt>\d+) prompt \+ (?P<completion>\d+) reply tokens"
)


def field(page: Page, elem_id: str) -> Locator:
    """The text input inside a Gradio Textbox/Number (a textarea, or an input for passwords)."""
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def open_home(page: Page) -> None:
    page.goto("/")
    expect(page.locator("#login-button")).to_be_visible()


def register(page: Page, username: str, email: str, password: str, confirm: str) -> None:
    page.get_by_role("tab", name="Create account").click()
    field(page, "register-username").fill(username)
    field(page, "register-email").fill(email)
    field(page, "register-password").fill(password)
    field(page, "register-confirm").fill(confirm)
    page.locator("#register-button").click()


def login(page: Page, username: str, password: str) -> None:
    page.get_by_role("tab", name="Sign in").click()
    field(page, "login-username").fill(username)
    field(page, "login-password").fill(password)
    page.locator("#login-button").click()
    expect(page.locator("#chat-input")).to_be_visible()
    expect(page.locator("#lc-balance [data-available]")).to_be_visible()


def sign_up_and_in(page: Page, username: str, password: str) -> None:
    open_home(page)
    register(page, username, f"{username}@example.com", password, password)
    expect(page.locator("#login-notice")).to_contain_text("Account created")
    login(page, username, password)


def available_balance(page: Page) -> int:
    return int(page.locator("#lc-balance [data-available]").get_attribute("data-available") or "")


def set_sampling(page: Page, temperature: float, max_tokens: int) -> None:
    accordion = page.locator("#sampling")
    if not field(page, "temperature").is_visible():
        accordion.get_by_text("Sampling settings").click()
    fill_number(page, "temperature", temperature)
    fill_number(page, "max-tokens", max_tokens)


def fill_number(page: Page, elem_id: str, value: float) -> None:
    """Type into a Gradio Number until it holds the value. A Number that has just been
    mounted (the sampling accordion was opened) can be re-rendered with its initial value
    right after the first keystrokes, so the value is checked and typed again if needed."""
    box = field(page, elem_id)
    wanted = str(value)
    for _ in range(FILL_ATTEMPTS):
        box.fill(wanted)
        box.press("Tab")
        time.sleep(FILL_SETTLE_S)
        if box.input_value() == wanted:
            return
    expect(box).to_have_value(wanted)


def choose_model(page: Page, label_start: str) -> None:
    page.locator("#model-select input").click()
    page.locator('[data-testid="dropdown-option"]', has_text=label_start).first.click()


def send(page: Page, message: str) -> None:
    field(page, "chat-input").fill(message)
    page.locator("#send-button").click()


def user_messages(page: Page) -> Locator:
    return page.locator('#chatbot [data-testid="user"]')


def bot_messages(page: Page) -> Locator:
    return page.locator('#chatbot [data-testid="bot"]')


def wait_for_footer(page: Page) -> dict[str, int]:
    """Wait until the last reply carries its cost line; return cost and token counts."""
    last = bot_messages(page).last
    expect(last).to_contain_text("reply tokens", timeout=REPLY_TIMEOUT_MS)
    match = FOOTER_PATTERN.search(last.inner_text())
    assert match is not None, f"no cost line in {last.inner_text()!r}"
    return {
        "cost": int(match["cost"].replace(",", "")),
        "prompt": int(match["prompt"]),
        "completion": int(match["completion"]),
    }


# Records the last reply's text length at every change the page makes to the chat (a
# MutationObserver), so a fast stream is seen whole however the test's own polling is scheduled.
_WATCH_REPLY_JS = """() => {
  const chatbot = document.querySelector('#chatbot');
  window.__lcReplyLengths = [];
  if (window.__lcReplyObserver) window.__lcReplyObserver.disconnect();
  window.__lcReplyObserver = new MutationObserver(() => {
    const bots = chatbot.querySelectorAll('[data-testid="bot"]');
    if (!bots.length) return;
    const text = bots[bots.length - 1].innerText;
    if (!text.includes('reply tokens')) window.__lcReplyLengths.push(text.length);
  });
  window.__lcReplyObserver.observe(
    chatbot, {subtree: true, childList: true, characterData: true});
}"""


def watch_reply(page: Page) -> None:
    """Start recording the next reply's lengths as it renders; call before `send`."""
    page.evaluate(_WATCH_REPLY_JS)


def reply_lengths_while_streaming(page: Page, timeout_s: float) -> list[int]:
    """The last reply's text lengths as the page rendered them (from `watch_reply`), once its
    cost line appears."""
    expect(bot_messages(page).last).to_contain_text("reply tokens", timeout=timeout_s * 1000)
    lengths: list[int] = page.evaluate("() => window.__lcReplyLengths")
    page.evaluate("() => window.__lcReplyObserver.disconnect()")
    return lengths


def open_account(page: Page) -> None:
    page.get_by_role("tab", name="Account").click()
    expect(page.locator("#balance-cards [data-value]").first).to_be_visible()


def evaluate(page: Page, script: str) -> Any:
    return page.evaluate(script)


def admin_signed_in(page: Page, live_server: Any, name: str) -> None:
    """Create an admin with `ledgerchat user create` on the live server (a
    `tests.ui.conftest.LiveServer`), sign in, and open the Admin tab."""
    created = live_server.cli(
        "user",
        "create",
        name,
        "--email",
        f"{name}@example.com",
        "--admin",
        "--password-stdin",
        stdin=TEST_PASSWORD + "\n",
    )
    assert created.returncode == 0, created.stderr
    open_home(page)
    login(page, name, TEST_PASSWORD)
    page.get_by_role("tab", name="Admin").click()
    expect(page.locator("#users-table")).to_contain_text(name)
