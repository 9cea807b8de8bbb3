"""`ledgerchat serve` as a real child process: the port open while the default model is
prepared (a GGUF converted) and loaded, its progress (a bar on a terminal, log lines
otherwise), the ready line it prints once chat works, its log lines (readable on a terminal,
JSON otherwise), and the signing secret it keeps in the data directory so that a restart keeps
people signed in."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.inference.tiny_gguf import (
    conversion_lock_held,
    tiny_gguf_catalog_entry,
    write_tiny_gguf,
)
from tests.web.conftest import FAST_HASHING, TINY
from tests.web.web_testing import free_port, signed_in
from web.domain.accounts.tokens import JWT_SECRET_FILE, SecretFileError, kept_signing_secret

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.2
TINY_GGUF = "tiny-gguf"


class ServeProcess:
    """`python -m web.cli serve` with stdout read line by line (the ready line) and stderr
    either into a file or onto a pseudo-terminal (`tty=True`)."""

    def __init__(self, environ: dict[str, str], port: int, stderr_path: Path, tty: bool) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.stdout_lines: list[str] = []
        self._stderr_path = stderr_path
        self._terminal: int | None = None
        if tty:
            self._terminal, stderr_target = pty.openpty()
        else:
            self._stderr_file = stderr_path.open("wb")
            stderr_target = self._stderr_file.fileno()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "web.cli", "serve", "--port", str(port)],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=stderr_target,
            text=True,
        )
        if tty:
            os.close(stderr_target)  # the child holds its own copy
            threading.Thread(target=self._copy_terminal, daemon=True).start()
        else:
            self._stderr_file.close()
        self._ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            if line.startswith("ledgerchat "):
                self._ready.set()
        self._ready.set()  # exited: let the waiter see it

    def _copy_terminal(self) -> None:
        # Drained continuously, or the child would block once the terminal's buffer is full.
        assert self._terminal is not None
        with self._stderr_path.open("wb") as copy:
            while True:
                try:
                    chunk = os.read(self._terminal, 65536)
                except OSError:  # EIO once the child has closed its end
                    return
                if not chunk:
                    return
                copy.write(chunk)
                copy.flush()

    def has_printed_a_line(self) -> bool:
        return self._ready.is_set()

    def wait_ready_line(self) -> str:
        assert self._ready.wait(READY_TIMEOUT_S), "no line on stdout within the deadline"
        lines = [line for line in self.stdout_lines if line.startswith("ledgerchat ")]
        assert lines, f"serve exited without a ready line; stderr:\n{self.stderr_text()}"
        return lines[0]

    def stderr_text(self) -> str:
        return self._stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        if self._terminal is not None:
            time.sleep(0.2)  # let the copier take the last bytes before the end is closed
            os.close(self._terminal)
            self._terminal = None
        return self.process.returncode


@pytest.fixture
def serve_environ(sqlite_url: str, web_catalog: Path, tmp_path: Path) -> dict[str, str]:
    """No LEDGERCHAT_AUTH_JWT_SECRET: the secret comes from the data directory."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEDGERCHAT_")},
        "LEDGERCHAT_DATABASE_URL": sqlite_url,
        "LEDGERCHAT_DATA_DIR": str(tmp_path / "data"),
        "LEDGERCHAT_CATALOG": str(web_catalog),
        "LEDGERCHAT_CHAT_DEFAULT_MODEL": TINY,
        "LEDGERCHAT_INFERENCE_CACHE_DIR": str(tmp_path / "model-cache"),
        "LEDGERCHAT_UI_ENABLED": "false",
        **FAST_HASHING,
    }


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for process in started:
        process.stop()


def start(
    started: list[ServeProcess], environ: dict[str, str], tmp_path: Path, *, tty: bool = False
) -> ServeProcess:
    name = f"serve-{len(started)}.stderr"
    process = ServeProcess(environ, free_port(), tmp_path / name, tty)
    started.append(process)
    return process


READY_LINE = re.compile(
    r"^ledgerchat ready: http://127\.0\.0\.1:(?P<port>\d+) "
    r"\(model (?P<model>\S+) loaded in (?P<seconds>\d+) s\)$"
)


class TestServeStart:
    async def test_ready_line_json_logs_and_a_token_that_outlives_a_restart(
        self, serve_environ, serving, tmp_path
    ):
        """serve prints one plain line with its real URL and the model's load seconds only
        once chat works (/ready answers 200); its stderr, a file here, is JSON lines; and the
        signing secret kept in the data directory (0600) lets a restarted server accept the
        access token the first one issued."""
        first = start(serving, serve_environ, tmp_path)
        match = READY_LINE.match(first.wait_ready_line())
        assert match is not None, first.stdout_lines
        assert (int(match["port"]), match["model"]) == (first.port, TINY)
        async with httpx.AsyncClient(base_url=first.base_url) as client:
            ready = await client.get("/ready")
            assert ready.status_code == 200, ready.text
            headers = await signed_in(client, "alice")
        assert first.stop() == 0
        lines = [line for line in first.stderr_text().splitlines() if line.strip()]
        events = [json.loads(line)["event"] for line in lines]
        assert {"services_started", "default_model_loaded"} <= set(events)
        secret_file = Path(serve_environ["LEDGERCHAT_DATA_DIR"]) / JWT_SECRET_FILE
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600

        second = start(serving, serve_environ, tmp_path)
        second.wait_ready_line()
        async with httpx.AsyncClient(base_url=second.base_url) as client:
            me = await client.get("/api/me", headers=headers)
        assert me.status_code == 200, me.text

    def test_on_a_terminal_logs_are_readable_lines(self, serve_environ, serving, tmp_path):
        """With stderr a terminal, log lines are structlog's console lines, not JSON; the
        ready line names LEDGERCHAT_PUBLIC_URL when set; a configured secret writes no file."""
        environ = {
            **serve_environ,
            "LEDGERCHAT_PUBLIC_URL": "https://chat.example.com",
            "LEDGERCHAT_AUTH_JWT_SECRET": "configured-" + "s" * 40,
        }
        process = start(serving, environ, tmp_path, tty=True)
        line = process.wait_ready_line()
        assert line.startswith("ledgerchat ready: https://chat.example.com (model tiny loaded in ")
        assert process.stop() == 0
        text = re.sub(r"\x1b\[[0-9;]*m", "", process.stderr_text())  # colours off
        lines = [line for line in text.splitlines() if line.strip()]
        started = [line for line in lines if "services_started" in line]
        assert started, text
        assert "[info" in started[0]
        assert not any(line.lstrip().startswith("{") for line in lines), text
        assert not (Path(environ["LEDGERCHAT_DATA_DIR"]) / JWT_SECRET_FILE).exists()

    def test_a_secret_file_others_can_read_stops_the_start(self, serve_environ, tmp_path):
        """A kept secret with group or other permissions is refused with one line, exit 2,
        before anything starts."""
        data_dir = Path(serve_environ["LEDGERCHAT_DATA_DIR"])
        data_dir.mkdir()
        secret_file = data_dir / JWT_SECRET_FILE
        secret_file.write_text("x" * 64)
        secret_file.chmod(0o644)
        result = subprocess.run(
            [sys.executable, "-m", "web.cli", "serve", "--port", str(free_port())],
            env=serve_environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2
        assert "chmod 600" in result.stderr
        assert "readable by other users (mode 0644)" in result.stderr


@pytest.fixture
def gguf_environ(serve_environ: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """serve_environ with a tiny GGUF as the default model, converted at the first start."""
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
    catalog = tmp_path / "gguf-catalog.toml"
    catalog.write_text(tiny_gguf_catalog_entry(TINY_GGUF, gguf_path), encoding="utf-8")
    return {
        **serve_environ,
        "LEDGERCHAT_CATALOG": str(catalog),
        "LEDGERCHAT_CHAT_DEFAULT_MODEL": TINY_GGUF,
    }


async def wait_for_ready_body(process: ServeProcess, wanted: str) -> dict[str, object]:
    """Poll /ready (generous deadline) until the default model's check contains `wanted`."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: object = None
    async with httpx.AsyncClient(base_url=process.base_url) as client:
        while time.monotonic() < deadline:
            assert process.process.poll() is None, process.stderr_text()
            try:
                response = await client.get("/ready")
            except httpx.TransportError as exc:  # not listening yet
                last = exc
            else:
                last = response.json()
                if wanted in str(response.json()["checks"].get("default_model")):
                    assert response.status_code == 503
                    return dict(response.json())
            await asyncio.sleep(POLL_S)
    raise AssertionError(f"/ready never said {wanted!r}; last: {last}")


class TestFirstStartConverts:
    async def test_port_answers_while_the_conversion_waits_and_progress_is_logged(
        self, gguf_environ, serving, tmp_path
    ):
        """A first start that must convert its GGUF, held in its preparation by another
        holder of the cache's conversion lock: /ready already answers (503, with the loading
        percentage), and no ready line is printed. Released, it converts, loads and prints the
        ready line; stderr (a file) has one JSON `default_model_loading` line per stage, in
        order, with a percentage that only grows."""
        with conversion_lock_held(Path(gguf_environ["LEDGERCHAT_INFERENCE_CACHE_DIR"])):
            process = start(serving, gguf_environ, tmp_path)
            body = await wait_for_ready_body(process, "waiting for another conversion")
            assert isinstance(body["loading_percent"], int)
            assert 0 < body["loading_percent"] < 10, body
            assert not process.has_printed_a_line(), process.stdout_lines
        match = READY_LINE.match(process.wait_ready_line())
        assert match is not None, process.stdout_lines
        assert match["model"] == TINY_GGUF
        assert process.stop() == 0
        progress = [
            json.loads(line)
            for line in process.stderr_text().splitlines()
            if '"default_model_loading"' in line
        ]
        stages = [line["stage"] for line in progress]
        assert stages[0] in ("starting", "hashing"), stages
        assert stages[stages.index("waiting_for_conversion") :] == [
            "waiting_for_conversion",
            *[
                stage
                for stage in (
                    "reading_gguf",
                    "converting_tokenizer",
                    "converting_weights",
                    "saving",
                    "loading_tokenizer",
                    "loading_weights",
                )
                if stage in stages
            ],
        ], stages
        assert "converting_weights" in stages or "saving" in stages, stages
        percents = [line["percent"] for line in progress]
        assert percents == sorted(percents) and percents[-1] < 100

    def test_on_a_terminal_one_bar_shows_the_load_to_100_percent(
        self, gguf_environ, serving, tmp_path
    ):
        """With stderr a terminal, the preparation and load show as one tqdm bar named after
        the model, ending at 100% once loaded, before the ready line; the log's lines are
        printed above it, readable, not JSON."""
        process = start(serving, gguf_environ, tmp_path, tty=True)
        assert READY_LINE.match(process.wait_ready_line()), process.stdout_lines
        assert process.stop() == 0
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", process.stderr_text())
        assert f"loading {TINY_GGUF}: 100%" in text, text
        assert "loaded" in text
        assert "gguf_conversion_finished" in text
        assert not any(line.lstrip().startswith("{") for line in text.splitlines()), text


class TestKeptSigningSecretFile:
    def test_starts_racing_on_a_new_data_dir_agree_on_one_secret(self, tmp_path):
        """Many starts creating the secret at once all get the same one, never a partial
        file, and the file is private (0600)."""
        data_dir = tmp_path / "data"
        with ThreadPoolExecutor(max_workers=8) as pool:
            secrets_seen = set(pool.map(lambda _: kept_signing_secret(data_dir), range(32)))
        assert len(secrets_seen) == 1
        (secret,) = secrets_seen
        assert len(secret) >= 64
        assert stat.S_IMODE((data_dir / JWT_SECRET_FILE).stat().st_mode) == 0o600
        assert [p.name for p in data_dir.iterdir()] == [JWT_SECRET_FILE]

    def test_an_empty_secret_file_is_refused(self, tmp_path):
        """An empty kept secret would sign nothing safely: refused with a fix to apply."""
        (tmp_path / JWT_SECRET_FILE).touch(mode=0o600)
        with pytest.raises(SecretFileError, match="delete it"):
            kept_signing_secret(tmp_path)

    def test_a_planted_link_is_refused(self, tmp_path):
        """A link in the data directory pointing at someone's own 0600 file would let them
        choose the signing secret: the kept secret must be a regular file, not a link."""
        planted = tmp_path / "attacker-secret"
        planted.write_text("chosen-by-someone-else\n", encoding="utf-8")
        planted.chmod(0o600)
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        (data_dir / JWT_SECRET_FILE).symlink_to(planted)
        with pytest.raises(SecretFileError, match="plain file"):
            kept_signing_secret(data_dir)
