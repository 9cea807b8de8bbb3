"""The ledger reports whether its schema is at the newest migration (used by /ready)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from ledger import Ledger
from ledger.storage.schema import VERSION_TABLE


class TestSchemaVersion:
    async def test_current_after_open_and_outdated_when_the_version_is_behind(
        self, database_url: str
    ) -> None:
        """Opening upgrades to head, so the schema is current; a database whose recorded
        revision is not the newest (older code upgraded it, or a migration is missing) is
        reported as not current."""
        ledger = await Ledger.open(database_url)
        try:
            assert await ledger.schema_is_current()
            engine = create_async_engine(database_url)
            try:
                async with engine.begin() as connection:
                    await connection.execute(
                        text(f"UPDATE {VERSION_TABLE} SET version_num = 'an_older_revision'")
                    )
            finally:
                await engine.dispose()
            assert not await ledger.schema_is_current()
        finally:
            await ledger.close()
