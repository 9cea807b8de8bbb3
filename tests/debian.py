"""Debian packages the live tests need (chromium for the browser tests, nginx for the
multi-process ones), installed once with apt-get when missing and the tests run as root.
When a package cannot be had, its tests skip with the reason, except under CI=true, where
that is a failure: CI must run them, not report them skipped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

APT_TIMEOUT_S = 900


def ci() -> bool:
    return os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> None:
    if ci():
        pytest.fail(f"CI=true requires these tests to run: {reason}")
    pytest.skip(reason)


def install(package: str, path: Path) -> str | None:
    """apt-get install `package` (root only); None when `path` exists afterwards, else the
    reason it failed."""
    if os.geteuid() != 0:
        return f"{path} is missing and installing it needs root (apt-get install {package})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(command)} failed: {exc!r}"
        if done.returncode != 0:
            return f"{' '.join(command)} exited {done.returncode}: {done.stderr[-500:]}"
    return None if path.exists() else f"apt-get installed {package} but {path} is absent"


def require(package: str, path: Path) -> Path:
    """`path`, installing `package` first when it is missing; skips (fails under CI=true)
    when it cannot be installed."""
    if not path.exists():
        reason = install(package, path)
        if reason is not None:
            skip_or_fail(reason)
    return path
