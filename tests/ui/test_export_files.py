"""The UI's CSV export against the real services: the file lands in a private (0700) folder of
this process, not a shared world-readable one, and is deleted once its TTL has passed."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from web.services import Services
from web.ui.account import AccountActions
from web.ui.export_files import private_folder, sweep
from web.ui.session import UISession

PASSWORD = "correct-horse-42"


async def _signed_in(services: Services, username: str) -> UISession:
    await services.accounts.register(username, f"{username}@example.com", PASSWORD)
    tokens = await services.accounts.login(username, PASSWORD, "127.0.0.1")
    session = UISession()
    session.start(tokens, await services.accounts.identity_from_access_token(tokens.access_token))
    return session


class TestCsvExportFiles:
    async def test_export_is_private_and_expires(self, services: Services) -> None:
        """The exported file sits in a 0700 folder under the temp dir, readable by this user
        only; a sweep after the TTL removes it."""
        session = await _signed_in(services, "exporter")
        update, _ = await AccountActions(services).export_csv(session)
        _check_private_then_expired(
            Path(update["value"]), services.settings.server.csv_export_ttl_s
        )


def _check_private_then_expired(path: Path, ttl_s: int) -> None:
    assert path.read_text(encoding="utf-8").startswith("event_id,")
    assert path.parent == private_folder()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.parent.stat().st_uid == os.geteuid()
    old = time.time() - ttl_s - 5
    os.utime(path, (old, old))
    assert sweep(ttl_s) >= 1
    assert not path.exists()
