"""`ledgerchat user create|list|topup` and `ledgerchat key create` against a real database,
through the same application services as the API."""

from __future__ import annotations

import io
import json

import pytest

from conftest import FAST_HASHING
from web.cli import main


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, sqlite_url: str, web_catalog, tmp_path):
    for name in list(__import__("os").environ):
        if name.startswith("LEDGERCHAT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("LEDGERCHAT_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("LEDGERCHAT_CATALOG", str(web_catalog))
    monkeypatch.setenv("LEDGERCHAT_INFERENCE_CACHE_DIR", str(tmp_path / "cache"))
    for name, value in FAST_HASHING.items():
        monkeypatch.setenv(name, value)
    return sqlite_url


class TestUserCommands:
    def test_create_admin_list_and_topup(self, cli_env, capsys, monkeypatch):
        """The first admin is made by the CLI; list shows balances; topup adds credits once
        per idempotency key."""
        monkeypatch.setattr("sys.stdin", io.StringIO("admin pass 123\n"))
        assert (
            main(
                [
                    "user",
                    "create",
                    "boss",
                    "--email",
                    "b@example.com",
                    "--password-stdin",
                    "--admin",
                ]
            )
            == 0
        )
        assert "created admin boss" in capsys.readouterr().out
        assert main(["user", "topup", "boss", "25", "--idempotency-key", "t1"]) == 0
        assert main(["user", "topup", "boss", "25", "--idempotency-key", "t1"]) == 0
        capsys.readouterr()
        assert main(["user", "list"]) == 0
        listing = capsys.readouterr().out.splitlines()
        assert listing[0].split() == [
            "id",
            "username",
            "email",
            "role",
            "posted",
            "held",
            "available",
        ]
        row = listing[1].split()
        assert row[1:4] == ["boss", "b@example.com", "admin"]
        assert int(row[4]) == 100 + 25

    def test_bad_input_is_a_usage_error(self, cli_env, capsys, monkeypatch):
        """A weak password or an unknown user exits 2 with a message, no traceback."""
        monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
        assert main(["user", "create", "weak", "--email", "w@example.com", "--password-stdin"]) == 2
        assert "password" in capsys.readouterr().err
        assert main(["user", "topup", "nobody", "5"]) == 2
        assert "does not exist" in capsys.readouterr().err


class TestKeyCommand:
    def test_key_create_prints_a_working_secret(self, cli_env, capsys, monkeypatch):
        """The printed secret authenticates as that user."""
        import asyncio

        from web.services import Services
        from web.settings import load_settings

        monkeypatch.setattr("sys.stdin", io.StringIO("user pass 123\n"))
        main(["user", "create", "keyed", "--email", "k@example.com", "--password-stdin"])
        capsys.readouterr()
        assert main(["key", "create", "keyed", "--name", "ci"]) == 0
        secret = capsys.readouterr().out.strip()
        assert secret.startswith("lc-")

        async def who() -> str:
            services = Services(load_settings(), start_engine=False, start_background_jobs=False)
            await services.start()
            try:
                return (await services.api_keys.authenticate(secret)).username
            finally:
                await services.close()

        assert asyncio.run(who()) == "keyed"
        assert json.dumps(secret)  # printable as-is
