"""Settings through the `ledgerchat` command: the paths derived from LEDGERCHAT_DATA_DIR reach
the ledger's and the engine's subcommands, and a bad boolean stops every command in one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from web.cli import main


def forget_after_test(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """`main` puts derived variables into os.environ; make the test put them back as absent."""
    for name in names:
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)


class TestDataDirThroughTheCommand:
    def test_audit_reads_the_database_in_the_data_dir(
        self,
        cli_env: str,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> None:
        """With only LEDGERCHAT_DATA_DIR set, `user create` and `audit` (the ledger's own
        subcommand, which does not read the data directory) use the same database in it."""
        forget_after_test(monkeypatch, "LEDGERCHAT_DATABASE_URL", "LEDGERCHAT_INFERENCE_CACHE_DIR")
        data_dir = tmp_path / "lc-data"
        monkeypatch.setenv("LEDGERCHAT_DATA_DIR", str(data_dir))
        monkeypatch.setattr("sys.stdin", io.StringIO("a long password 1\n"))
        assert main(["user", "create", "dana", "--email", "d@x.com", "--password-stdin"]) == 0
        assert (data_dir / "ledgerchat.db").is_file()
        capsys.readouterr()
        assert main(["audit", "--format", "json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert len(report["accounts"]) == 1, report

    @pytest.mark.parametrize("argv", [["user", "list"], ["audit"], ["models", "list"]])
    def test_a_bad_boolean_stops_every_command_in_one_line(
        self,
        cli_env: str,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        argv: list[str],
    ) -> None:
        """LEDGERCHAT_UI_ENABLED=maybe: exit 2 and one error line naming the variable,
        whichever package's command runs."""
        monkeypatch.setenv("LEDGERCHAT_UI_ENABLED", "maybe")
        assert main(argv) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(errors) == 1 and "LEDGERCHAT_UI_ENABLED" in errors[0], errors
