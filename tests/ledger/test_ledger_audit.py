"""The audit and the `ledgerchat audit` command: clean runs, tampering, exit codes, formats."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from ledger import Ledger, LedgerSettings, StorageError
from ledger.cli import EXIT_CLEAN, EXIT_USAGE, EXIT_VIOLATIONS
from ledger.clock import ManualClock
from web.cli import main as ledgerchat


async def populate(ledger: Ledger) -> str:
    account = await ledger.open_account("alice")
    await ledger.add_credits(account, 1_000, source="grant", idempotency_key="seed")
    hold = await ledger.place_hold(account, 100, purpose="p", reference="r", idempotency_key="h")
    await ledger.capture_hold(account, hold.hold, 40, idempotency_key="c")
    charge = await ledger.charge(account, 30, idempotency_key="ch")
    await ledger.refund(account, charge.event_id, 10, reason="x", idempotency_key="rf")
    for n in range(6):
        await ledger.charge(account, 1, idempotency_key=f"small{n}")
    return account


@pytest.fixture
async def sqlite_ledger_file(sqlite_url: str, settings: LedgerSettings) -> tuple[str, Path, str]:
    ledger = await Ledger.open(sqlite_url, settings=settings)
    try:
        account = await populate(ledger)
    finally:
        await ledger.close()
    database = make_url(sqlite_url).database
    assert database is not None
    return sqlite_url, Path(database), account


def run_audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = ledgerchat(["audit", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def run_audit_async(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command runs its own event loop, so tests with async fixtures call it off-loop."""
    code = await asyncio.to_thread(ledgerchat, ["audit", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class TestAuditReport:
    async def test_clean_ledger_reports_totals(self, ledger: Ledger) -> None:
        """A ledger written only through commands audits clean, with replayed totals."""
        await populate(ledger)
        report = await ledger.audit()
        assert report.clean, report.violations
        data = report.to_dict()
        json.dumps(data)  # serialisable as is
        assert data["totals"]["issued"] == 1000
        assert data["totals"]["posted"] == 1000 - 40 - 30 + 10 - 6
        assert data["clean"] is True

    async def test_expired_unreleased_hold_is_reported(
        self, ledger: Ledger, clock: ManualClock, settings: LedgerSettings
    ) -> None:
        """A hold left past expiry plus the grace period is a violation until swept."""
        account = await ledger.open_account("alice")
        await ledger.add_credits(account, 10, source="grant", idempotency_key="seed")
        await ledger.place_hold(
            account, 5, ttl_s=10, purpose="p", reference="r", idempotency_key="h"
        )
        clock.advance(10 + settings.audit_expired_hold_grace_s + 1)
        kinds = [v.kind for v in (await ledger.audit()).violations]
        assert kinds == ["expired_hold_unreleased"]
        await ledger.sweep_expired_holds()
        assert (await ledger.audit()).clean


class TestTampering:
    """Rows edited behind the ledger's back (sqlite3 module, as a person with the file would)."""

    def edit(self, path: Path, statement: str, *params: object) -> None:
        connection = sqlite3.connect(path)
        try:
            changed = connection.execute(statement, params).rowcount
            connection.commit()
        finally:
            connection.close()
        assert changed >= 1

    async def audit_kinds(self, url: str, settings: LedgerSettings) -> set[str]:
        ledger = await Ledger.open(url, settings=settings)
        try:
            return {v.kind for v in (await ledger.audit()).violations}
        finally:
            await ledger.close()

    async def test_hand_edited_amount_is_caught(
        self,
        sqlite_ledger_file: tuple[str, Path, str],
        settings: LedgerSettings,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Changing one charge's amount breaks its hash and the replayed balance: exit 1."""
        url, path, account = sqlite_ledger_file
        assert (await run_audit_async(capsys, "--db", url))[0] == EXIT_CLEAN
        self.edit(
            path,
            "UPDATE ledger_events SET amount = amount - 1 WHERE account_id = ? AND sequence = 5",
            account,
        )
        code, out, _ = await run_audit_async(capsys, "--db", url, "--format", "json")
        assert code == EXIT_VIOLATIONS
        kinds = {v["kind"] for v in json.loads(out)["violations"]}
        assert {"hash_mismatch", "balance_mismatch"} <= kinds

    async def test_deleted_event_is_caught(
        self, sqlite_ledger_file: tuple[str, Path, str], settings: LedgerSettings
    ) -> None:
        """Deleting a row leaves a sequence gap and a broken chain."""
        url, path, account = sqlite_ledger_file
        self.edit(path, "DELETE FROM ledger_events WHERE account_id = ? AND sequence = 3", account)
        assert {"sequence_gap", "chain_broken"} <= await self.audit_kinds(url, settings)

    async def test_deleted_last_event_is_caught(
        self, sqlite_ledger_file: tuple[str, Path, str], settings: LedgerSettings
    ) -> None:
        """Deleting the newest row is caught by the account head."""
        url, path, account = sqlite_ledger_file
        self.edit(
            path,
            "DELETE FROM ledger_events WHERE account_id = ? AND sequence = "
            "(SELECT max(sequence) FROM ledger_events WHERE account_id = ?)",
            account,
            account,
        )
        assert "head_mismatch" in await self.audit_kinds(url, settings)

    async def test_edited_snapshot_is_caught(
        self, sqlite_ledger_file: tuple[str, Path, str], settings: LedgerSettings
    ) -> None:
        """A snapshot that disagrees with replay is reported."""
        url, path, account = sqlite_ledger_file
        self.edit(
            path,
            "UPDATE ledger_snapshots SET posted = posted + 5 WHERE account_id = ? AND sequence > 0",
            account,
        )
        assert "snapshot_mismatch" in await self.audit_kinds(url, settings)

    async def test_rehashed_overdraft_and_overrefund_are_caught(
        self, sqlite_ledger_file: tuple[str, Path, str], settings: LedgerSettings
    ) -> None:
        """Even with hashes recomputed, rule breaks (negative available, refund above what
        was taken) are found by replay."""
        from ledger.domain import Event
        from ledger.storage.rows import event_to_row

        url, path, account = sqlite_ledger_file
        ledger = await Ledger.open(url, settings=settings)
        try:
            events = [e async for e in ledger.store.stream_events(account)]
        finally:
            await ledger.close()
        # Rewrite the log: the refund now gives back 100 (the charge took 30), the last charge
        # takes 5,000; hashes and stored balances recomputed so only the rules are broken.
        import dataclasses

        from ledger.domain import AccountState, apply

        state = AccountState(account, "alice")
        rewritten: list[Event] = []
        for event in events:
            amount = event.amount
            if event.event_type == "refunded":
                amount = 100
            if event is events[-1]:
                amount = 5_000
            draft = dataclasses.replace(event, amount=amount, prev_hash=state.head_hash, hash="")
            probe = state.copy()
            apply(probe, dataclasses.replace(draft, hash="x"))
            draft = dataclasses.replace(draft, posted_after=probe.posted, held_after=probe.held)
            final = dataclasses.replace(draft, hash=draft.compute_hash())
            apply(state, final)
            rewritten.append(final)
        connection = sqlite3.connect(path)
        try:
            connection.execute("DELETE FROM ledger_events WHERE account_id = ?", (account,))
            connection.execute("DELETE FROM ledger_snapshots WHERE account_id = ?", (account,))
            for event in rewritten:
                row = event_to_row(event)
                names = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                connection.execute(
                    f"INSERT INTO ledger_events ({names}) VALUES ({marks})", tuple(row.values())
                )
            connection.execute(
                "UPDATE ledger_accounts SET head_sequence = ?, head_hash = ? WHERE account_id = ?",
                (state.sequence, state.head_hash, account),
            )
            connection.commit()
        finally:
            connection.close()
        kinds = await self.audit_kinds(url, settings)
        assert {"negative_available", "refund_exceeds_taken"} <= kinds
        assert "hash_mismatch" not in kinds


class TestCorruptAccount:
    async def test_a_corrupt_account_fails_alone(
        self, sqlite_url: str, settings: LedgerSettings
    ) -> None:
        """An account whose head disagrees with its log gets StorageError; commands for
        other accounts in the same batch still commit."""
        ledger = await Ledger.open(sqlite_url, settings=settings)
        try:
            broken = await ledger.open_account("broken")
            healthy = await ledger.open_account("healthy")
            for account_id in (broken, healthy):
                await ledger.add_credits(account_id, 50, source="grant", idempotency_key="seed")
            path = make_url(sqlite_url).database
            assert path is not None
            connection = sqlite3.connect(path)
            try:
                connection.execute(
                    "UPDATE ledger_accounts SET head_sequence = head_sequence + 5 "
                    "WHERE account_id = ?",
                    (broken,),
                )
                connection.commit()
            finally:
                connection.close()
            results = await asyncio.gather(
                ledger.charge(broken, 1, idempotency_key="a"),
                ledger.charge(healthy, 1, idempotency_key="b"),
                return_exceptions=True,
            )
            assert isinstance(results[0], StorageError)
            assert not isinstance(results[1], BaseException)
            assert (await ledger.balance(healthy)).posted == 49
        finally:
            await ledger.close()


class TestAuditCommand:
    async def test_formats(
        self, sqlite_ledger_file: tuple[str, Path, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """table (default), json and csv all describe the same clean ledger."""
        url, _, account = sqlite_ledger_file
        code, out, _ = await run_audit_async(capsys, "--db", url)
        assert code == EXIT_CLEAN and "clean" in out and account in out
        code, out, _ = await run_audit_async(capsys, "--db", url, "--format", "json")
        assert code == EXIT_CLEAN and json.loads(out)["accounts_checked"] == 1
        code, out, _ = await run_audit_async(
            capsys, "--db", url, "--format", "csv", "--account", account
        )
        rows = list(csv.DictReader(io.StringIO(out)))
        assert code == EXIT_CLEAN
        assert {"account_id": account, "value": "934"}.items() <= next(
            r for r in rows if r["record"] == "account"
        ).items()

    async def test_default_database_comes_from_the_environment(
        self,
        sqlite_ledger_file: tuple[str, Path, str],
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Without --db the audit reads LEDGERCHAT_DATABASE_URL, like the service."""
        url, _, _ = sqlite_ledger_file
        monkeypatch.setenv("LEDGERCHAT_DATABASE_URL", url)
        assert (await run_audit_async(capsys))[0] == EXIT_CLEAN

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--db", "sqlite+aiosqlite:////nonexistent/dir/ledger.db"], "no database file"),
            (["--db", "mysql://x@y/z"], "unsupported database"),
            (["--db", "not a url"], "not a database URL"),
            (["--db", "postgresql+asyncpg://nobody@127.0.0.1:1/none"], "cannot"),
        ],
    )
    def test_errors_exit_2_without_traceback(
        self, capsys: pytest.CaptureFixture[str], args: list[str], message: str
    ) -> None:
        """Bad or unreachable databases: exit 2 and one clear line on stderr."""
        code, _, err = run_audit(capsys, *args)
        assert code == EXIT_USAGE
        assert message in err and "Traceback" not in err

    def test_usage_error_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown format is a usage error (exit 2)."""
        with pytest.raises(SystemExit) as exited:
            ledgerchat(["audit", "--format", "xml"])
        assert exited.value.code == EXIT_USAGE


async def execute(url: str, *statements: str) -> None:
    """Run SQL behind the ledger's back (either backend)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


class TestConsistentSnapshot:
    async def test_audit_while_commands_commit_is_clean(self, ledger: Ledger) -> None:
        """Every audit read happens in one transaction: audits taken while charges commit
        report no head, snapshot or hold-index mismatches."""
        accounts = [await ledger.open_account(f"owner{n}") for n in range(12)]
        for account in accounts:
            await ledger.add_credits(account, 10**6, source="grant", idempotency_key="seed")
        stop = asyncio.Event()

        async def write() -> int:
            rounds = 0
            while not stop.is_set():
                await asyncio.gather(
                    *(ledger.charge(a, 1, idempotency_key=f"c{rounds}") for a in accounts)
                )
                rounds += 1
            return rounds

        writer = asyncio.create_task(write())
        try:
            await asyncio.sleep(0.2)
            reports = [await ledger.audit() for _ in range(6)]
        finally:
            stop.set()
            rounds = await writer
        assert rounds > 1
        for report in reports:
            assert report.clean, [(v.kind, v.detail) for v in report.violations][:5]
            # One moment: the totals add up to the events seen at that moment.
            assert report.totals.issued == 12 * 10**6
            assert report.totals.charged == report.events_checked - 12


class TestMalformedRows:
    async def test_undecodable_rows_are_findings_and_the_audit_goes_on(
        self, ledger: Ledger, database_url: str
    ) -> None:
        """A row that does not decode is a malformed_row naming its account and sequence;
        the audit still reports the other accounts (here a hand-edited amount)."""
        damaged = await populate(ledger)
        other = await ledger.open_account("bob")
        await ledger.add_credits(other, 50, source="grant", idempotency_key="seed")
        await ledger.charge(other, 5, idempotency_key="c")
        await execute(
            database_url,
            "UPDATE ledger_events SET metadata_json = '{' "
            f"WHERE account_id = '{damaged}' AND sequence = 2",
            "UPDATE ledger_events SET metadata_json = '[]' "
            f"WHERE account_id = '{damaged}' AND sequence = 5",
            "UPDATE ledger_events SET event_type = 'bogus' "
            f"WHERE account_id = '{damaged}' AND sequence = 6",
            "UPDATE ledger_snapshots SET holds_json = '[[1]]' "
            f"WHERE account_id = '{damaged}' AND sequence = 4",
            f"UPDATE ledger_events SET amount = 4 WHERE account_id = '{other}' AND sequence = 2",
        )
        report = await ledger.audit()
        malformed = {
            (v.account_id, v.sequence) for v in report.violations if v.kind == "malformed_row"
        }
        assert malformed == {(damaged, 2), (damaged, 5), (damaged, 6), (damaged, 4)}
        assert {"hash_mismatch", "balance_mismatch"} <= {
            v.kind for v in report.violations if v.account_id == other
        }
        assert report.accounts_checked == 2

    async def test_cli_reports_malformed_rows_with_exit_1(
        self,
        sqlite_ledger_file: tuple[str, Path, str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """SQLite lets any value into any column ('x' as an amount): still exit 1 with the
        finding, never exit 2 or a traceback."""
        url, path, account = sqlite_ledger_file
        TestTampering().edit(
            path,
            "UPDATE ledger_events SET amount = 'x' WHERE account_id = ? AND sequence = 3",
            account,
        )
        code, out, err = await run_audit_async(capsys, "--db", url, "--format", "json")
        assert (code, err) == (EXIT_VIOLATIONS, "")
        found = [v for v in json.loads(out)["violations"] if v["kind"] == "malformed_row"]
        assert [(v["account_id"], v["sequence"]) for v in found] == [(account, 3)]

    @pytest.mark.parametrize(
        "statement", ["DROP TABLE ledger_hold_expiry", "DROP TABLE ledger_snapshots"]
    )
    async def test_missing_table_exits_2_with_one_line(
        self,
        sqlite_ledger_file: tuple[str, Path, str],
        capsys: pytest.CaptureFixture[str],
        statement: str,
    ) -> None:
        """A database the audit cannot read is exit 2 and one line, not a traceback (exit 1
        means violations and nothing else)."""
        url, path, _ = sqlite_ledger_file
        connection = sqlite3.connect(path)
        connection.execute(statement)
        connection.close()
        code, out, err = await run_audit_async(capsys, "--db", url)
        assert code == EXIT_USAGE and out == ""
        assert "no such table" in err and len(err.strip().splitlines()) == 1

    async def test_missing_table_is_a_storage_error_from_the_api(
        self, ledger: Ledger, database_url: str
    ) -> None:
        """Ledger.audit() (the admin endpoint) raises StorageError, not a driver error."""
        await populate(ledger)
        await execute(database_url, "DROP TABLE ledger_hold_expiry")
        with pytest.raises(StorageError, match="ledger_hold_expiry"):
            await ledger.audit()


class TestReadOnlyAudit:
    @staticmethod
    def fingerprint(path: Path) -> tuple[bytes, list[str]]:
        siblings = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))
        return path.read_bytes(), siblings

    @pytest.mark.parametrize("content", ["empty", "other"])
    def test_non_ledger_sqlite_file_is_left_unchanged(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
    ) -> None:
        """An empty file or another application's database: exit 2 'not a ledger database',
        and the file is byte for byte what it was (no tables, no switch to WAL)."""
        path = tmp_path / "some.db"
        if content == "empty":
            path.write_bytes(b"")
        else:
            connection = sqlite3.connect(path)
            connection.execute("CREATE TABLE notes (body TEXT)")
            connection.execute("INSERT INTO notes VALUES ('hello')")
            connection.commit()
            connection.close()
        before = self.fingerprint(path)
        code, out, err = run_audit(capsys, "--db", f"sqlite:///{path}")
        assert (code, out) == (EXIT_USAGE, "")
        assert "not a ledger database" in err and "Traceback" not in err
        assert self.fingerprint(path) == before
        connection = sqlite3.connect(path)
        try:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        finally:
            connection.close()

    async def test_outdated_schema_is_reported_not_upgraded(
        self, sqlite_ledger_file: tuple[str, Path, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A ledger whose schema is not at the newest revision: exit 2 and how to fix it;
        the recorded revision stays as it was."""
        from ledger.storage.schema import VERSION_TABLE

        url, path, _ = sqlite_ledger_file
        await execute(url, f"UPDATE {VERSION_TABLE} SET version_num = 'an_older_revision'")
        code, _, err = await run_audit_async(capsys, "--db", url)
        assert code == EXIT_USAGE and "schema" in err and "Traceback" not in err
        connection = sqlite3.connect(path)
        try:
            (revision,) = connection.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
        finally:
            connection.close()
        assert revision == "an_older_revision"

    async def test_fresh_postgres_database_gets_no_tables(
        self, postgres_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Auditing an empty PostgreSQL database is exit 2 and creates nothing."""
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        code, _, err = await run_audit_async(capsys, "--db", postgres_url)
        assert code == EXIT_USAGE and "not a ledger database" in err
        engine = create_async_engine(postgres_url)
        try:
            async with engine.connect() as connection:
                tables = (
                    await connection.execute(
                        text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    )
                ).all()
        finally:
            await engine.dispose()
        assert tables == []

    async def test_postgres_ledger_audits_clean(
        self,
        postgres_url: str,
        settings: LedgerSettings,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The read-only path audits a real PostgreSQL ledger."""
        ledger = await Ledger.open(postgres_url, settings=settings)
        try:
            account = await populate(ledger)
        finally:
            await ledger.close()
        capsys.readouterr()  # the ledger's log lines
        code, out, _ = await run_audit_async(capsys, "--db", postgres_url, "--format", "json")
        assert code == EXIT_CLEAN and json.loads(out)["accounts_checked"] == 1
        code, _, err = await run_audit_async(capsys, "--db", postgres_url, "--account", "nope")
        assert code == EXIT_USAGE and "nope" in err
        assert account

    def test_empty_db_argument_is_a_usage_error(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """`--db ''` does not fall back to the default database."""
        monkeypatch.setenv("LEDGERCHAT_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
        code, _, err = run_audit(capsys, "--db", "")
        assert code == EXIT_USAGE and "--db" in err


def test_sequence_zero_is_printed() -> None:
    """A finding at sequence 0 shows 0 in CSV and table output, not a blank."""
    from rich.console import Console

    from ledger.audit import AuditReport, Violation
    from ledger.cli import render_csv, render_table

    report = AuditReport(checked_at="now")
    report.violations.append(Violation("head_mismatch", "acct_1", 0, "empty log"))
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert rows[0]["sequence"] == "0"
    console = Console(record=True, width=200)
    render_table(report, console)
    assert "│ 0 " in console.export_text()
