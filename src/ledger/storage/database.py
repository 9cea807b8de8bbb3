"""Engines for the two backends and the schema upgrade.

SQLite (aiosqlite) is the embedded default: WAL, synchronous=NORMAL, a busy timeout, and every
write transaction opened with BEGIN IMMEDIATE so writers queue on the lock instead of failing
when a read transaction tries to upgrade. PostgreSQL (asyncpg) is the scale path. Each ledger
uses a small write engine (the writer, the sweeper, account creation) and a read pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ledger.errors import InvalidArgument
from ledger.settings import LedgerSettings
from ledger.storage.schema import VERSION_TABLE, metadata

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Serialises concurrent schema upgrades of several processes on PostgreSQL.
_MIGRATION_LOCK_ID = 0x1ED6E5


@dataclass(frozen=True, slots=True)
class Engines:
    backend: str  # "sqlite" or "postgresql"
    write: AsyncEngine
    read: AsyncEngine
    # SQLite only: a synchronous engine the writer uses from its own thread (see writer.py).
    writer_thread: Engine | None = None

    async def dispose(self) -> None:
        await self.write.dispose()
        await self.read.dispose()
        if self.writer_thread is not None:
            self.writer_thread.dispose()


def normalise_url(url: str) -> str:
    """Accept plain sqlite:/// and postgresql:// URLs and pick the async drivers."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidArgument(f"not a database URL: {url!r}") from exc
    if parsed.drivername in ("sqlite", "sqlite+aiosqlite"):
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+asyncpg"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise InvalidArgument(
        f"unsupported database {parsed.drivername!r}: use sqlite+aiosqlite or postgresql+asyncpg"
    )


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (None for in-memory or other backends)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def sqlite_engine(url: str, settings: LedgerSettings, *, pool_size: int, begin: str) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        connect_args={"timeout": settings.busy_timeout_ms / 1000},
    )
    _configure_sqlite(engine.sync_engine, settings, begin)
    return engine


def sqlite_thread_engine(url: str, settings: LedgerSettings) -> Engine:
    """A pysqlite engine with one connection, used only from the writer's thread."""
    sync_url = make_url(url).set(drivername="sqlite+pysqlite")
    engine = create_engine(
        sync_url,
        pool_size=1,
        max_overflow=0,
        connect_args={"timeout": settings.busy_timeout_ms / 1000, "check_same_thread": False},
    )
    _configure_sqlite(engine, settings, "BEGIN IMMEDIATE")
    return engine


def _configure_sqlite(engine: Engine, settings: LedgerSettings, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN instead of the driver's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(settings.busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(begin)


def create_engines(url: str, settings: LedgerSettings) -> Engines:
    url = normalise_url(url)
    path = sqlite_path(url)
    if url.startswith("sqlite"):
        if path is None:
            raise InvalidArgument("the ledger needs an SQLite file, not an in-memory database")
        path.parent.mkdir(parents=True, exist_ok=True)
        write = sqlite_engine(url, settings, pool_size=2, begin="BEGIN IMMEDIATE")
        read = sqlite_engine(url, settings, pool_size=settings.read_pool_size, begin="BEGIN")
        return Engines("sqlite", write, read, sqlite_thread_engine(url, settings))
    write = create_async_engine(url, pool_size=2, max_overflow=0)
    read = create_async_engine(url, pool_size=settings.read_pool_size, max_overflow=0)
    return Engines("postgresql", write, read)


def _run_alembic_upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _schema_revision_is_head(connection: Connection) -> bool:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision() == head


async def schema_is_current(engines: Engines) -> bool:
    """True when the ledger tables are at the newest migration (for readiness probes)."""
    async with engines.read.connect() as connection:
        return bool(await connection.run_sync(_schema_revision_is_head))


async def upgrade_schema(engines: Engines) -> None:
    """Bring the ledger tables to the newest migration; safe when several processes start."""
    async with engines.write.begin() as connection:
        if engines.backend == "postgresql":
            await connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})"))
        await connection.run_sync(_run_alembic_upgrade)


def create_audit_engines(url: str, settings: LedgerSettings) -> Engines:
    """Read-only engines for `ledgerchat audit`: no migration, no writer, nothing written.

    SQLite opens the file with `mode=ro` and `query_only`, and leaves its journal mode alone
    (the service's engines switch a file to WAL); PostgreSQL reads in REPEATABLE READ READ ONLY
    transactions (`EventStore.audit_reads`). Write and read are the same one-connection engine.
    """
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is None:
            raise InvalidArgument("the ledger needs an SQLite file, not an in-memory database")
        read_only = URL.create(
            "sqlite+aiosqlite",
            database="file:" + quote(str(path.absolute())),
            query={"mode": "ro", "uri": "true"},
        )
        engine = create_async_engine(
            read_only,
            pool_size=1,
            max_overflow=0,
            connect_args={"timeout": settings.busy_timeout_ms / 1000},
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={int(settings.busy_timeout_ms)}")
            cursor.execute("PRAGMA query_only=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN")

        return Engines("sqlite", engine, engine)
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    return Engines("postgresql", engine, engine)


def _schema_problem(connection: Connection) -> str | None:
    tables = set(inspect(connection).get_table_names())
    if VERSION_TABLE not in tables:
        ledger_tables = sorted(tables & set(metadata.tables))
        if not ledger_tables:
            return "not a ledger database (no ledger tables)"
        return f"not a ledger database (no {VERSION_TABLE} table beside {ledger_tables})"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    current = context.get_current_revision()
    if current == head:
        return None
    known = {revision.revision for revision in script.walk_revisions()}
    if current is not None and current not in known:
        return (
            f"schema revision {current!r} is newer than this ledgerchat knows ({head!r}): "
            "audit with the version that wrote it"
        )
    return (
        f"schema out of date (revision {current!r}, this version needs {head!r}): start the "
        "service once (ledgerchat serve upgrades it), then audit again"
    )


async def schema_problem(engines: Engines) -> str | None:
    """Why the database cannot be audited as it is (None: the ledger schema is at head).

    Reads only: unlike `upgrade_schema` it creates nothing, so auditing the wrong file or an
    empty database leaves it as it was."""
    async with engines.read.connect() as connection:
        if engines.backend == "postgresql":
            connection = await connection.execution_options(postgresql_readonly=True)
        async with connection.begin():
            return await connection.run_sync(_schema_problem)
