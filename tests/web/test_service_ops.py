"""Operator-facing behaviour: concurrent starts, CLI failures as one line with exit 2, plain
database URLs, `serve` start-up checks and signals, `.env` for every command, and streams cut
by shutdown."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.web.conftest import TINY
from tests.web.web_testing import free_port, hold_streams_open, signed_in, sse_events
from web.cli import main
from web.settings import SettingsError, load_settings


def one_error_line(err: str) -> str:
    """The command's stderr: exactly one `error: ...` line, no traceback, no SQLAlchemy code."""
    assert "Traceback" not in err, err
    assert "sqlalche.me" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line and not line.startswith("{")]
    assert len(errors) == 1, err
    return errors[0]


def forget_env_after_test(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """`main` loads .env into os.environ; make the test put those variables back as absent."""
    for name in names:
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)


UPGRADE_SCRIPT = """
import asyncio, sys
from web.database import create_engine, upgrade_schema

async def main():
    engine = create_engine(sys.argv[1])
    try:
        await upgrade_schema(engine)
    finally:
        await engine.dispose()

asyncio.run(main())
"""


@pytest.mark.live
class TestConcurrentStart:
    def test_four_processes_upgrade_a_fresh_postgres_together(self, postgres_url):
        """Web migrations take an advisory lock, like the ledger's: none of four processes
        starting at once on an empty database fails on CREATE TABLE (pg_type)."""
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", UPGRADE_SCRIPT, postgres_url],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(4)
        ]
        outputs = [process.communicate(timeout=120)[0].decode() for process in processes]
        assert [process.returncode for process in processes] == [0, 0, 0, 0], outputs


class TestCliFailures:
    @pytest.mark.parametrize(
        ("variable", "value", "expected"),
        [
            ("LEDGERCHAT_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none", "database"),
            ("LEDGERCHAT_DATABASE_URL", "mysql://x@localhost/y", "LEDGERCHAT_DATABASE_URL"),
            ("LEDGERCHAT_DATABASE_URL", "::not a url", "LEDGERCHAT_DATABASE_URL"),
            ("LEDGERCHAT_LEDGER_BATCH_SIZE", "many", "BATCH_SIZE"),
            ("LEDGERCHAT_LOG_LEVEL", "verbose", "LEDGERCHAT_LOG_LEVEL"),
        ],
    )
    def test_environment_errors_are_one_line_exit_2(
        self, cli_env, capsys, monkeypatch, variable, value, expected
    ):
        monkeypatch.setenv(variable, value)
        assert main(["user", "list"]) == 2
        assert expected.lower() in one_error_line(capsys.readouterr().err).lower()

    def test_data_dir_that_is_a_file(self, cli_env, capsys, monkeypatch, tmp_path):
        blocker = tmp_path / "afile"
        blocker.write_text("")
        monkeypatch.delenv("LEDGERCHAT_DATABASE_URL")
        monkeypatch.setenv("LEDGERCHAT_DATA_DIR", str(blocker))
        assert main(["user", "list"]) == 2
        one_error_line(capsys.readouterr().err)

    def test_user_commands_do_not_need_the_model_catalog(self, cli_env, capsys, monkeypatch):
        monkeypatch.setenv("LEDGERCHAT_CATALOG", "/nonexistent/catalog.toml")
        monkeypatch.setenv("LEDGERCHAT_INFERENCE_QUEUE_LIMIT", "lots")
        assert main(["user", "list"]) == 0
        assert capsys.readouterr().out.split()[:2] == ["id", "username"]

    def test_password_prompt_eof_and_mismatch(self, cli_env, capsys, monkeypatch):
        """No tty and stdin at EOF, or two different passwords: one line, exit 2."""
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        monkeypatch.setattr("getpass.getpass", lambda prompt="": input(prompt))
        assert main(["user", "create", "eve", "--email", "e@example.com"]) == 2
        assert "password" in one_error_line(capsys.readouterr().err)
        answers = iter(["first password 1", "other password 2"])
        monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
        assert main(["user", "create", "eve", "--email", "e@example.com"]) == 2
        assert "differ" in one_error_line(capsys.readouterr().err)

    def test_topup_replay_says_already_applied(self, cli_env, capsys, monkeypatch):
        monkeypatch.setattr("sys.stdin", io.StringIO("topup pass 123\n"))
        assert main(["user", "create", "tom", "--email", "t@x.com", "--password-stdin"]) == 0
        assert main(["user", "topup", "tom", "50", "--idempotency-key", "k1"]) == 0
        first = capsys.readouterr().out
        assert "+50, available 150" in first and "already" not in first
        assert main(["user", "topup", "tom", "50", "--idempotency-key", "k1"]) == 0
        assert "already applied" in capsys.readouterr().out


class TestDatabaseUrls:
    @pytest.mark.parametrize(
        ("url", "normalised"),
        [
            ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
            ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
            ("sqlite:///x/ledgerchat.db", "sqlite+aiosqlite:///x/ledgerchat.db"),
        ],
    )
    def test_plain_urls_get_the_async_driver(self, url, normalised):
        settings = load_settings(environ={"LEDGERCHAT_DATABASE_URL": url}, env_file=None)
        assert settings.database_url == normalised

    def test_bad_url_names_the_variable(self):
        with pytest.raises(SettingsError, match="LEDGERCHAT_DATABASE_URL"):
            load_settings(environ={"LEDGERCHAT_DATABASE_URL": "oracle://x/y"}, env_file=None)

    def test_cli_with_a_plain_sqlite_url(self, cli_env, capsys, monkeypatch, tmp_path):
        monkeypatch.setenv("LEDGERCHAT_DATABASE_URL", f"sqlite:///{tmp_path / 'plain.db'}")
        assert main(["user", "list"]) == 0
        assert main(["user", "list", "--db", f"sqlite:///{tmp_path / 'other.db'}"]) == 0
        assert (tmp_path / "plain.db").is_file() and (tmp_path / "other.db").is_file()


class TestServeStartup:
    def test_port_in_use(self, cli_env, capsys):
        import socket

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            assert main(["serve", "--port", str(port)]) == 2
        assert str(port) in one_error_line(capsys.readouterr().err)

    @pytest.mark.parametrize("port", ["70000", "0", "-1"])
    def test_port_override_is_validated(self, cli_env, capsys, port):
        assert main(["serve", "--port", port]) == 2
        assert "LEDGERCHAT_PORT" in one_error_line(capsys.readouterr().err)

    def test_database_unreachable(self, cli_env, capsys):
        code = main(
            ["serve", "--port", str(free_port()), "--db", "postgresql://x@127.0.0.1:1/none"]
        )
        assert code == 2
        assert "did not start" in one_error_line(capsys.readouterr().err)


class TestEnvFile:
    def test_audit_reads_the_same_env_file_as_serve(self, cli_env, capsys, monkeypatch, tmp_path):
        """The entry point loads .env into the environment (set variables win), so `audit`
        looks at the database the user commands wrote to."""
        monkeypatch.delenv("LEDGERCHAT_DATABASE_URL")
        forget_env_after_test(monkeypatch, "LEDGERCHAT_DATABASE_URL")
        url = f"sqlite:///{tmp_path / 'from-env-file.db'}"
        (tmp_path / ".env").write_text(
            f"LEDGERCHAT_DATABASE_URL={url}  # the shared database\n"
            "LEDGERCHAT_CATALOG=/ignored/because/the/environment/wins\n"
        )
        monkeypatch.setattr("sys.stdin", io.StringIO("from the file 1\n"))
        assert main(["user", "create", "env", "--email", "n@x.com", "--password-stdin"]) == 0
        capsys.readouterr()
        assert main(["audit", "--format", "json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert len(report["accounts"]) == 1, report
        assert os.environ["LEDGERCHAT_CATALOG"] != "/ignored/because/the/environment/wins"

    def test_empty_data_dir_is_refused_everywhere(self, cli_env, capsys, monkeypatch):
        monkeypatch.setenv("LEDGERCHAT_DATA_DIR", "")
        for argv in (["user", "list"], ["audit"], ["models", "list"]):
            assert main(argv) == 2, argv
            assert "LEDGERCHAT_DATA_DIR" in one_error_line(capsys.readouterr().err)


# -- shutdown ----------------------------------------------------------------------------
async def start_stream(client: httpx.AsyncClient, headers: dict[str, str]) -> Any:
    request = client.build_request(
        "POST",
        "/api/chat",
        json={"message": "keep going", "sampling": {"max_tokens": 8}},
        headers=headers,
    )
    return await client.send(request, stream=True)


async def stream_through_shutdown(
    server: Any, client: httpx.AsyncClient, headers: dict[str, str], then: Any = None
) -> list[Any]:
    """Every event of a chat stream during which shutdown begins, as soon as it has started
    (then `then()` runs, if given)."""
    response = await start_stream(client, headers)
    events = []
    async for event in sse_events(response):
        events.append(event)
        if event.event == "start":
            server.services.begin_shutdown()
            if then is not None:
                then()
    await response.aclose()
    return events


class TestShutdownEndsStreams:
    async def test_stream_still_running_after_grace_gets_an_error_event(
        self, make_server, make_settings
    ):
        """Shutdown begins; after the grace period the service ends the stream itself: the
        client's last event is `error` `shutting_down`, and the hold is released in full."""
        server = await make_server(make_settings(LEDGERCHAT_SHUTDOWN_GRACE_S="0.2"))
        await server.services.engine.load(TINY)
        _resume, cancelled = hold_streams_open(server)
        async with server.client() as client:
            headers = await signed_in(client, "cut")
            events = await stream_through_shutdown(server, client, headers)
            assert events[-1].event == "error", [e.event for e in events]
            assert events[-1].data["error"]["code"] == "shutting_down"
            assert len(cancelled) == 1
            balance = (await client.get("/api/balance", headers=headers)).json()
            assert balance["posted"] == 100 and balance["held"] == 0, balance

    async def test_stream_finishing_within_grace_is_captured(self, make_server, make_settings):
        server = await make_server(make_settings(LEDGERCHAT_SHUTDOWN_GRACE_S="30"))
        await server.services.engine.load(TINY)
        resume, cancelled = hold_streams_open(server)
        async with server.client() as client:
            headers = await signed_in(client, "kept")
            events = await stream_through_shutdown(server, client, headers, then=resume.set)
        assert events[-1].event == "done"
        assert events[-1].data["settlement"] == "captured"
        assert cancelled == []


@pytest.mark.live
class TestServeSignals:
    @pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
    def test_signal_is_a_clean_stop(self, cli_env, web_catalog, tmp_path, sig):
        """Ctrl-C or SIGTERM: graceful shutdown, exit 0, no traceback."""
        port = free_port()
        environ = {
            **os.environ,
            "LEDGERCHAT_CHAT_DEFAULT_MODEL": "not-in-catalog",  # nothing to load
            "LEDGERCHAT_UI_ENABLED": "false",
            "LEDGERCHAT_AUTH_JWT_SECRET": "signal-test-secret-long-enough-for-hs256",
            "LEDGERCHAT_SHUTDOWN_GRACE_S": "1",
        }
        log_path = tmp_path / f"serve-{sig.name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "web.cli", "serve", "--port", str(port)],
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + 60
                while True:
                    assert process.poll() is None, log_path.read_text()
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "server did not start"
                    time.sleep(0.2)
                process.send_signal(sig)
                code = process.wait(30)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(30)
        output = log_path.read_text()
        assert code == 0, output
        assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
