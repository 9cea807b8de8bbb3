#!/usr/bin/env python3
"""Bootstrap for the two Quick start commands: `python3 dev.py serve` and `python3 dev.py tests`.

A fresh machine has only python3. This script makes a small virtual environment holding nox
(in `.nox-bootstrap/`), then hands over to the nox session of the same name, which builds the
project's own environment from pyproject.toml and constraints.txt. Any further arguments pass
through to the session (for `tests`, to pytest; for `serve`, to `ledgerchat serve`).
Other sessions work the same way: `python3 dev.py props`, `lint`, `typecheck`, `bench`, `e2e`;
`python3 dev.py ledgerchat ARGS...` runs any operator command (`user create`, `audit`, ...).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BOOTSTRAP_DIR = ROOT / ".nox-bootstrap"
NOX_REQUIREMENT = "nox>=2025.5"


def _bootstrap_python() -> Path:
    python = BOOTSTRAP_DIR / "bin" / "python"
    if not python.exists():
        print(f"dev.py: creating {BOOTSTRAP_DIR.name}/ with nox", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(BOOTSTRAP_DIR)
    probe = subprocess.run([python, "-c", "import nox"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run(
            [
                python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                NOX_REQUIREMENT,
            ],
            check=True,
        )
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if argv else 2
    session, passthrough = argv[0], argv[1:]
    python = _bootstrap_python()
    command = [str(python), "-m", "nox", "--noxfile", str(ROOT / "noxfile.py"), "-s", session]
    if passthrough:
        command += ["--", *passthrough]
    os.chdir(ROOT)
    process = subprocess.Popen(command)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            # The child had the same Ctrl-C and ends itself (serve: gracefully); killing it
            # here, as subprocess.call would, cuts that short. A second Ctrl-C reaches it too.
            continue


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
