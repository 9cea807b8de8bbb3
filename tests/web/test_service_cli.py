"""`ledgerchat user create|list|topup` and `ledgerchat key create` against a real database,
through the same application services as the API."""

from __future__ import annotations

import io
import json
import os

import pytest

from tests.web.conftest import TINY
from web.cli import main


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


class TestBenchCommands:
    """The benchmarks are commands, not timed tests: these runs only check that each one
    works end to end at a tiny size and prints its JSON object as the last line."""

    @pytest.mark.live
    def test_bench_service_with_the_tiny_model(self, cli_env, capsys, monkeypatch):
        """`bench service` serves the real app, streams through /api/chat and reports the
        paired SSE/engine ratio with its spread."""
        # The app preloads its default model at start-up: make that the tiny one too.
        monkeypatch.setenv("LEDGERCHAT_CHAT_DEFAULT_MODEL", TINY)
        code = main(
            [
                "bench",
                "service",
                "--model",
                TINY,
                "--max-tokens",
                "4",
                "--repeats",
                "3",
                "--billing-requests",
                "3",
            ]
        )
        assert code == 0
        results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert results["model"] == TINY and results["repeats"] == 3
        assert results["engine_tok_s"] > 0 and results["sse_tok_s"] > 0
        low, ratio, high = (
            results["sse_to_engine_ratio_min"],
            results["sse_to_engine_ratio"],
            results["sse_to_engine_ratio_max"],
        )
        assert 0 < low <= ratio <= high
        assert results["billing_samples"] == 3
        assert results["aggregate_tokens_8_users"] > 0

    def test_bench_service_refuses_bad_sizes(self, cli_env, capsys):
        assert main(["bench", "service", "--repeats", "0"]) == 2
        assert "--repeats must be >= 1" in capsys.readouterr().out

    def test_bench_ledger_small_run(self, cli_env, tmp_path, capsys):
        """`bench ledger` runs the writer, the naive way, the balance reads and (where a
        PostgreSQL server is reachable) the PostgreSQL writer, and audits what it wrote."""
        code = main(
            [
                "bench",
                "ledger",
                "--callers",
                "4",
                "--pairs",
                "3",
                "--accounts",
                "2",
                "--naive-ops",
                "8",
                "--small-events",
                "5",
                "--large-events",
                "40",
                "--reads",
                "3",
                "--dir",
                str(tmp_path / "bench"),
            ]
        )
        assert code == 0
        results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        for name in ("sqlite_ops_per_s", "sqlite_naive_ops_per_s", "balance_read_ratio"):
            assert results[name] > 0, name
        if os.environ.get("CI") == "true":
            assert results["postgres_ops_per_s"] > 0, results.get("postgres_note")
        else:
            assert results["postgres_ops_per_s"] or results["postgres_note"].startswith("skipped")

    def test_bench_ledger_refuses_bad_sizes(self, cli_env, capsys):
        assert main(["bench", "ledger", "--small-events", "50", "--large-events", "40"]) == 2
        assert "--small-events < --large-events" in capsys.readouterr().out
