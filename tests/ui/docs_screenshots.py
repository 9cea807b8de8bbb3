"""Takes the screenshots in docs/screenshots/ from a running `ledgerchat serve` (ideally with the
bundled Gemma 3 270M, so the replies are real text): the chat page on a laptop, the account
page on a laptop and on a phone, and the chat on a phone-sized screen.

    python tests/ui/docs_screenshots.py --base-url http://127.0.0.1:8000 --out docs/screenshots

It registers a fresh user, so it needs a server with signups open and signup credits.
Not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

# Same launch as the browser tests (tests/ui/conftest.py), without importing pytest fixtures.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
ACCOUNT = {"width": 1280, "height": 800}
PASSWORD = "screenshot-pass-42"
PROMPTS = ("The three most useful facts about the Moon are", "A short poem about bookkeeping:")
REPLY_TIMEOUT_MS = 600_000


def _field(page: Page, elem_id: str) -> object:
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def _sign_up(page: Page, username: str) -> None:
    page.goto("/")
    page.get_by_role("tab", name="Create account").click()
    page.locator("#register-username textarea").fill(username)
    page.locator("#register-email textarea").fill(f"{username}@example.com")
    page.locator("#register-password input").fill(PASSWORD)
    page.locator("#register-confirm input").fill(PASSWORD)
    page.locator("#register-button").click()
    expect(page.locator("#login-notice")).to_contain_text("Account created")
    page.locator("#login-password input").fill(PASSWORD)
    page.locator("#login-button").click()
    expect(page.locator("#chat-input")).to_be_visible()


def _ask(page: Page, prompt: str, max_tokens: int) -> None:
    page.locator("#sampling").get_by_text("Sampling settings").click()
    page.locator("#temperature input").fill("0.7")
    page.locator("#max-tokens input").fill(str(max_tokens))
    page.locator("#sampling").get_by_text("Sampling settings").click()
    replies = page.locator('#chatbot [data-testid="bot"]')
    before = replies.count()
    page.locator("#chat-input textarea").fill(prompt)
    page.locator("#send-button").click()
    expect(replies).to_have_count(before + 1, timeout=REPLY_TIMEOUT_MS)
    expect(replies.last).to_contain_text("reply tokens", timeout=REPLY_TIMEOUT_MS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    username = f"demo{int(time.time()) % 100_000}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=args.chromium, args=CHROMIUM_FLAGS, headless=True
        )
        context = browser.new_context(viewport=LAPTOP, base_url=args.base_url)
        page = context.new_page()
        _sign_up(page, username)
        for prompt in PROMPTS:
            _ask(page, prompt, args.max_tokens)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(args.out / "chat.png"))
        page.get_by_role("tab", name="Account").click()
        expect(page.locator("#history-table")).to_contain_text("Reply")
        time.sleep(2)  # let the plots draw
        page.set_viewport_size(ACCOUNT)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(args.out / "account.png"))
        page.set_viewport_size(PHONE)
        time.sleep(1)
        page.locator("#balance-cards").evaluate("(e) => e.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(args.out / "account-phone.png"))
        page.set_viewport_size(PHONE)
        page.get_by_role("tab", name="Chat").click()
        time.sleep(1)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(args.out / "chat-phone.png"))
        browser.close()
    print(f"screenshots written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
