"""Every command README.md and docs/*.md show is run as written (or listed, with the reason,
in `doc_commands.NOT_RUN`), and every repository path they name exists.

The commands run in document order in one scratch environment: a temporary data directory,
working directory and port, the tiny test model as the default (so `serve` is ready in
seconds), the hub offline. `python3 dev.py ledgerchat ARGS` and `python3 dev.py serve ARGS` run
as `ledgerchat ARGS` from this interpreter's environment (what those sessions run, without
nox's start); `TestDevPy` runs operator commands through dev.py itself."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.web.conftest import FAST_HASHING, TINY
from tests.web.doc_commands import (
    DOC_FILES,
    OUTPUT_SAMPLES,
    REPO_ROOT,
    DocCommand,
    Kind,
    all_commands,
    classify,
    cli_words,
    mention_exists,
    path_mentions,
    repository_paths,
)
from web.cli import build_parser

COMMAND_TIMEOUT_S = 120
SERVE_READY_TIMEOUT_S = 180
SERVE_STOP_TIMEOUT_S = 60
READY_LINE = re.compile(r"^ledgerchat ready: http://\S+ \(model \S+ loaded in \d+ s\)$")
PASSWORD = "violet-harbour-engine-42"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Scratch:
    """Where documented commands run: nothing of the user's data dir, port or .env."""

    def __init__(self, root: Path, catalog: Path) -> None:
        self.cwd = root / "work"
        self.cwd.mkdir()
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERCHAT_")}
        self.env.update(
            {
                "LEDGERCHAT_DATA_DIR": str(root / "data"),
                "LEDGERCHAT_PORT": str(self.port),
                "LEDGERCHAT_CATALOG": str(catalog),
                "LEDGERCHAT_CHAT_DEFAULT_MODEL": TINY,
                "LEDGERCHAT_INFERENCE_CACHE_DIR": str(root / "model-cache"),
                "LEDGERCHAT_LOG_LEVEL": "warning",
                **FAST_HASHING,
                # `models pull` must fail fast here, never download, never touch ~/.cache.
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "HF_HOME": str(root / "hf-home"),
                "GRADIO_ANALYTICS_ENABLED": "False",
            }
        )

    def argv(self, command: DocCommand) -> list[str]:
        words = list(cli_words(command) or ())
        if "--port" in words:  # a documented fixed port (8000) may be taken on this machine
            words[words.index("--port") + 1] = str(self.port)
        return [sys.executable, "-m", "web.cli", *words]

    def environment(self, command: DocCommand) -> dict[str, str]:
        return {**self.env, **dict(command.env)}


def run_once(scratch: Scratch, command: DocCommand) -> subprocess.CompletedProcess[str]:
    words = cli_words(command) or ()
    asks_password = words[:2] == ("user", "create") and not {
        "--password",
        "--password-stdin",
    } & set(words)
    return subprocess.run(
        scratch.argv(command),
        env=scratch.environment(command),
        cwd=scratch.cwd,
        # Without a terminal (new session) the password prompt reads stdin.
        input=f"{PASSWORD}\n{PASSWORD}\n" if asks_password else "",
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        start_new_session=True,
    )


def serve_until_ready(scratch: Scratch, command: DocCommand) -> str:
    """Start `serve` as written, wait for its ready line, stop it with Ctrl-C (SIGINT) and
    return the ready line; a start without one, or a stop that is not clean, fails."""
    log = scratch.cwd / "serve-stderr.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            scratch.argv(command),
            env=scratch.environment(command),
            cwd=scratch.cwd,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            seen.set()
        seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + SERVE_READY_TIMEOUT_S
        while not any(READY_LINE.match(line) for line in lines):
            assert process.poll() is None or reader.is_alive(), (
                f"{command.where}: `{command.text}` exited {process.returncode} without a "
                f"ready line:\n{log.read_text()[-2000:]}"
            )
            assert time.monotonic() < deadline, f"{command.where}: no ready line: {lines}"
            seen.wait(1.0)
            seen.clear()
        process.send_signal(signal.SIGINT)
        assert process.wait(SERVE_STOP_TIMEOUT_S) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return next(line for line in lines if READY_LINE.match(line))


def documented(kind: Kind) -> list[DocCommand]:
    parser = build_parser()
    return [command for command in all_commands() if classify(command, parser)[0] is kind]


class TestDocumentedCommands:
    def test_every_command_is_run_or_listed(self):
        """Each command shown is one the test runs, or listed with a reason, or a synopsis
        whose subcommand and options exist, or a bare reference: a new command that is none
        of these (an unknown program, subcommand or option, or a dev.py session that does not
        exist) fails here."""
        parser = build_parser()
        problems = []
        for command in all_commands():
            _, problem = classify(command, parser)
            if problem:
                problems.append(f"{command.where}: `{command.text}`: {problem}")
        assert not problems, "\n".join(problems)
        assert documented(Kind.RUN), "no runnable command found: the extraction is broken"

    def test_operator_commands_after_the_quick_start_go_through_dev_py(self):
        """Operator commands in README and operations.md are shown in a form that works after
        the Quick start (`ledgerchat` is not on PATH then)."""
        for command in all_commands():
            if (
                command.in_block
                and command.words[:1] == ("ledgerchat",)
                and not command.text.startswith(OUTPUT_SAMPLES)
            ):
                doc = command.where.split(":")[0]
                assert doc not in ("README.md", "docs/operations.md"), (
                    f"{command.where}: `{command.text}` does not work after the Quick start; "
                    "show `python3 dev.py ledgerchat ...`"
                )

    @pytest.mark.slow
    @pytest.mark.live
    def test_commands_run_as_written(self, tmp_path, web_catalog):
        """Every runnable command, in document order, once each: exit 0 (`models pull`
        offline: exit 2 with one `error:` line), `serve` until its ready line then a clean
        Ctrl-C, and a block's "the same command again prints" claims checked."""
        scratch = Scratch(tmp_path, web_catalog)
        done: set[tuple[str, ...]] = set()
        for command in documented(Kind.RUN):
            argv = tuple(scratch.argv(command)[3:])
            if argv in done and command.check_again is None:
                continue
            done.add(argv)
            if argv[:1] == ("serve",):
                serve_until_ready(scratch, command)
                continue
            result = run_once(scratch, command)
            what = f"{command.where}: `{command.text}`\n{result.stdout}\n{result.stderr}"
            if argv[:2] == ("models", "pull"):
                # Documented: "fails clearly offline".
                assert result.returncode == 2, what
                assert result.stderr.strip().splitlines()[-1].startswith("error:"), what
                continue
            assert result.returncode == 0, what
            if command.check_again is not None:
                again = run_once(scratch, command)
                assert again.returncode == 0, again.stderr
                assert command.check_again in again.stdout, (what, again.stdout)


class TestDevPy:
    @pytest.mark.slow
    @pytest.mark.live
    def test_operator_commands_go_through_dev_py(self, tmp_path, web_catalog):
        """`python3 dev.py ledgerchat ...` as README shows it: the command's output on stdout
        and its own exit code (2 for an unknown user), in a project environment that is
        already installed (no install on the way)."""
        stamps = list((REPO_ROOT / ".nox").glob("*/ledgerchat-install.sha256"))
        if not (REPO_ROOT / ".nox-bootstrap").exists() or not stamps:
            reason = "no dev.py environment here (run the suite through `python3 dev.py tests`)"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        scratch = Scratch(tmp_path, web_catalog)

        def dev_py(*words: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["python3", "dev.py", "ledgerchat", *words],
                env=scratch.env,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                start_new_session=True,
            )

        listed = dev_py("user", "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines()[0].split()[:2] == ["id", "username"], listed.stdout
        assert "pip install" not in listed.stderr
        refused = dev_py("user", "topup", "nobody", "5")
        assert refused.returncode == 2, refused.stderr
        assert "error: user 'nobody' does not exist" in refused.stderr


class TestDocumentedPaths:
    @pytest.mark.parametrize("doc", DOC_FILES, ids=lambda path: path.name)
    def test_every_path_named_exists(self, doc: Path):
        """Files, folders and links the text names are in the repository (a module may be
        named by its tail in its package's table; run-time files are listed)."""
        paths = repository_paths()
        missing = [
            f"{where}: {mention}"
            for mention, where in path_mentions(doc)
            if not mention_exists(mention, doc, paths)
        ]
        assert not missing, "\n".join(missing)

    def test_paths_in_commands_exist(self):
        """A repository file given to a documented command (`--prompts tests/...`) exists."""
        missing = []
        for command in all_commands():
            for word in command.words[1:]:
                named = re.fullmatch(r"(src|tests|docs)/[\w./-]+", word)
                if named and not (REPO_ROOT / word).exists():
                    missing.append(f"{command.where}: {word}")
        assert not missing, "\n".join(missing)
