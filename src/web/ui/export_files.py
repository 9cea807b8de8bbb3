"""Where the UI puts files for the browser to download (the CSV export) and how long they stay.

One private folder per process (`tempfile.mkdtemp`: mode 0700, a random name), which is also
the cache Gradio copies served files into, so no other local user can list or read anyone's
transaction history. Files older than the export TTL (LEDGERCHAT_CSV_EXPORT_TTL_S) are deleted
by a sweep that runs after each export's TTL and on every export; the folder goes at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
import time
from pathlib import Path

_folder: Path | None = None


def private_folder() -> Path:
    """This process's export folder, created (0700) on first use and removed at exit."""
    global _folder
    if _folder is None or not _folder.is_dir():
        _folder = Path(tempfile.mkdtemp(prefix="ledgerchat-ui-"))
        atexit.register(shutil.rmtree, _folder, True)
    return _folder


def gradio_cache_folder() -> Path:
    """The subfolder Gradio copies served files into. It must differ from the export folder:
    Gradio serves only files it copied itself, and it copies none already inside its cache."""
    folder = private_folder() / "served"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def sweep(max_age_s: float) -> int:
    """Delete files in the folder (and Gradio's cache subfolders) older than `max_age_s`;
    returns how many went."""
    folder = private_folder()
    cutoff = time.time() - max_age_s
    removed = 0
    for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
            elif path.is_dir() and path.name != "served" and not any(path.iterdir()):
                path.rmdir()
        except FileNotFoundError:
            continue  # another sweep got there first
    return removed


def schedule_sweep(ttl_s: float) -> None:
    """Sweep once more just after a new file's TTL, so it goes even if no export follows."""
    loop = asyncio.get_running_loop()
    loop.call_later(ttl_s + 1.0, sweep, ttl_s)
