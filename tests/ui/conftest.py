"""Browser test harness: Debian's chromium (installed once if missing), a live `ledgerchat
serve` on a free loopback port with a temporary data directory and a catalog of tiny random
Gemma 3 models, and Playwright pages that save a screenshot of every step under artifacts/ui/.

Nothing is downloaded by Playwright: chromium comes from apt and is launched by path with the
flags FACTS.md lists. Without chromium (and no way to install it) the browser tests skip with
the reason, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import debian
from tests.inference import tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "artifacts" / "ui"
CHROMIUM_PATH = Path("/usr/bin/chromium")
# FACTS.md: without the background-networking flags chromium keeps calling hosts this closed
# network refuses. Playwright adds a fresh --user-data-dir per launch itself.
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
SERVER_READY_TIMEOUT_S = 180
SERVER_STOP_TIMEOUT_S = 20
STEP_TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1280, "height": 860}

# Catalog of the live server. Prices are chosen so the tests can reason about them:
# `tiny` is cheap, `tiny-premium` costs more per message than the signup grant (so it always
# gets the insufficient-credits notice), `tiny-missing` has no weights (shown unavailable),
# `tiny-broken` has garbage weights and falls back to `tiny` when asked.
TINY_MODEL = "tiny"
PREMIUM_MODEL = "tiny-premium"
MISSING_MODEL = "tiny-missing"
BROKEN_MODEL = "tiny-broken"
TINY_CONTEXT_LIMIT_TOKENS = 1024
TINY_MAX_NEW_TOKENS_CAP = 900
SIGNUP_GRANT_CREDITS = 100
PREMIUM_PER_MESSAGE_CREDITS = SIGNUP_GRANT_CREDITS * 5
TEST_PASSWORD = "correct-horse-42"


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    return debian.require("chromium", CHROMIUM_PATH)


def save_visible_tiny_gemma(directory: Path) -> Path:
    """The tiny random Gemma 3 with the embedding rows of every token that is not a letter or
    digit set to zero. Its logits are the tied embeddings, so those tokens score 0 while the
    letters and digits score at random around it: greedy decoding then writes visible text
    and practically never the end token, so a reply runs to the requested length. Plain
    random weights decode to blank lines, which a browser cannot watch streaming in."""
    import torch
    from transformers import Gemma3ForCausalLM

    tokenizer = tiny_model.build_tokenizer()
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(tiny_model.build_config(vocab_size=len(tokenizer)))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    visible = {token_id for token, token_id in tokenizer.get_vocab().items() if token.isalnum()}
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        for token_id in range(embeddings.shape[0]):
            if token_id not in visible:
                embeddings[token_id].zero_()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def catalog_toml_entry(
    model_id: str, name: str, path: Path, per_message: int, extra: str = ""
) -> str:
    return f"""
[[models]]
id = "{model_id}"
display_name = "{name}"
source = {{ kind = "hf_dir", path = "{path}" }}
dtype = "float32"
device = "cpu"
context_limit_tokens = {TINY_CONTEXT_LIMIT_TOKENS}
max_new_tokens_cap = {TINY_MAX_NEW_TOKENS_CAP}
price = {{ per_message_credits = {per_message}, prompt_credits_per_1k_tokens = 2, \
completion_credits_per_1k_tokens = 20 }}
{extra}
"""


def catalog_toml(model_dir: Path, missing_dir: Path, broken_dir: Path) -> str:
    entry = catalog_toml_entry
    return (
        entry(TINY_MODEL, "Tiny Gemma", model_dir, 1, "load_at_start = true")
        + entry(PREMIUM_MODEL, "Tiny Gemma Premium", model_dir, PREMIUM_PER_MESSAGE_CREDITS)
        + entry(MISSING_MODEL, "Tiny Gemma Missing", missing_dir, 1)
        + entry(
            BROKEN_MODEL, "Tiny Gemma Broken", broken_dir, 1, f'fallback_model_id = "{TINY_MODEL}"'
        )
    )


def save_broken_model(model_dir: Path, directory: Path) -> Path:
    """Looks like a model directory, but its weights file is garbage: loading it fails."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, directory / name)
    (directory / "model.safetensors").write_bytes(b"this is not a safetensors file")
    return directory


@pytest.fixture(scope="session")
def ui_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ui-models")
    model_dir = save_visible_tiny_gemma(folder / "tiny")
    path = folder / "catalog.toml"
    broken_dir = save_broken_model(model_dir, folder / "broken")
    path.write_text(catalog_toml(model_dir, folder / "not-there", broken_dir), encoding="utf-8")
    return path


AVAILABLE_MODEL = "here"
GONE_MODEL = "gone"


@pytest.fixture
async def services(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    """The real application services on a fresh SQLite file, engine not started: for UI
    actions that need accounts, billing and the catalog but no generation. The catalog has
    one model whose weights directory exists and one whose directory does not."""
    from web.services import Services
    from web.settings import load_settings

    catalog = tmp_path / "catalog.toml"
    (tmp_path / "weights").mkdir()
    # Enough for the catalog to call it available; nothing here loads it.
    (tmp_path / "weights" / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"")
    catalog.write_text(
        catalog_toml_entry(AVAILABLE_MODEL, "Here", tmp_path / "weights", 1)
        + catalog_toml_entry(GONE_MODEL, "Gone", tmp_path / "nope", 1),
        encoding="utf-8",
    )
    settings = load_settings(
        environ={
            "LEDGERCHAT_DATABASE_URL": sqlite_url,
            "LEDGERCHAT_AUTH_JWT_SECRET": "ui-unit-tests-secret-0123456789abcdef",
            "LEDGERCHAT_CATALOG": str(catalog),
            "LEDGERCHAT_CHAT_DEFAULT_MODEL": AVAILABLE_MODEL,
        },
        env_file=None,
    )
    started = Services(settings, start_engine=False, start_background_jobs=False)
    await started.start()
    try:
        yield started
    finally:
        await started.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


class LiveServer:
    """A `ledgerchat serve` subprocess and how to reach and administer it."""

    def __init__(self, base_url: str, env: dict[str, str], log_path: Path) -> None:
        self.base_url = base_url
        self.env = env
        self.log_path = log_path

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run another `ledgerchat` command against the same database."""
        return subprocess.run(
            [sys.executable, "-m", "web.cli", *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )


@pytest.fixture(scope="session")
def live_server(ui_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("ui-server")
    port = _free_port()
    env = {
        **os.environ,
        "LEDGERCHAT_DATA_DIR": str(data_dir),
        "LEDGERCHAT_DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'ledgerchat.db'}",
        "LEDGERCHAT_CATALOG": str(ui_catalog),
        "LEDGERCHAT_CHAT_DEFAULT_MODEL": TINY_MODEL,
        "LEDGERCHAT_BILLING_SIGNUP_GRANT_CREDITS": str(SIGNUP_GRANT_CREDITS),
        "LEDGERCHAT_AUTH_JWT_SECRET": "ui-tests-only-secret-0123456789abcdef",
        # Every browser request comes from 127.0.0.1; the per-address limit is the API's
        # business and has its own tests.
        "LEDGERCHAT_RATE_LIMIT_PER_ADDRESS_PER_MINUTE": "100000",
        # Each browser test registers its own user from 127.0.0.1: no per-address signup limit
        # (tests/web/test_registration.py pins that limit).
        "LEDGERCHAT_AUTH_SIGNUPS_PER_ADDRESS_PER_HOUR": "0",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS_DIR / "server.log"
    with log_path.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "web.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(process, base_url, log_path)
            yield LiveServer(base_url, env, log_path)
        finally:
            _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
            pytest.fail(f"ledgerchat serve exited with {process.returncode}:\n{tail}")
        if _get_status(f"{base_url}/ready") == 200 and _get_status(f"{base_url}/") == 200:
            return
        time.sleep(0.5)
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    pytest.fail(f"ledgerchat serve not ready within {SERVER_READY_TIMEOUT_S} s:\n{tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # Open event-stream connections can hold uvicorn's graceful shutdown; the data dir
        # is temporary, so a hard stop after the grace period loses nothing.
        process.kill()
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)


# Module scope, not session: while Playwright's sync API runs, its event loop is the thread's
# running loop, and async tests of later modules (pytest-asyncio) could not start their own.
@pytest.fixture(scope="module")
def browser(chromium_executable: Path) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # the dev extra is missing
        debian.skip_or_fail(f"playwright is not installed: {exc}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium_executable), args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's outcome on the item so fixtures can screenshot failures."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


class Shots:
    """Numbered screenshots of one test, under artifacts/ui/<test name>/."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def __call__(self, page: Any, step: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    folder = ARTIFACTS_DIR / request.node.name.replace("/", "_").replace("[", "-").strip("]")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return Shots(folder)


@pytest.fixture
def page(
    browser: Any, live_server: LiveServer, shots: Shots, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """A fresh browser context (own storage, so no sign-in leaks between tests)."""
    context = browser.new_context(viewport=VIEWPORT, base_url=live_server.base_url)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    new_page = context.new_page()
    console_errors: list[str] = []
    new_page.on(
        "console",
        lambda message: console_errors.append(message.text) if message.type == "error" else None,
    )
    try:
        yield new_page
    finally:
        call_report = getattr(request.node, "report_call", None)
        if call_report is not None and call_report.failed:
            try:
                shots(new_page, "failure")
            except Exception as exc:  # the page may be gone; the report still has the error
                print(f"failure screenshot not taken: {exc!r}")
            (shots.folder / "console-errors.txt").write_text("\n".join(console_errors))
        context.close()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Usernames unique per test run, so tests share one live server safely."""
    stamp = f"{int(time.time() * 1000) % 10_000_000}"

    def make(prefix: str) -> str:
        return f"{prefix}{stamp}"[:50]

    return make
