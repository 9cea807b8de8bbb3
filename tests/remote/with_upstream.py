"""Run commands against one freshly started upstream, then stop it:
`python -m tests.remote.with_upstream vllm|engine -- COMMAND ARGS... [--- COMMAND ARGS...]`.

Commands separated by `---` run in order against the same upstream (each runs even when an
earlier one failed; the exit status is the first non-zero one). In their arguments `{url}`
(no /v1), `{v1_url}`, `{api_key}` and `{model}` are replaced by the upstream's; they also get
LEDGERCHAT_UPSTREAM_URL, _V1_URL, _API_KEY, _MODEL, and for vLLM LEDGERCHAT_TEST_VLLM_URL,
_API_KEY and _LOG, so that the `vllm_upstream` fixture attaches to this server instead of
paying for a second start (minutes). The vLLM kind reads LEDGERCHAT_TEST_VLLM_PYTHON and
LEDGERCHAT_TEST_VLLM_MODEL_DIR as the fixtures do. The nox `vllm` session runs the contract
tests and `ledgerchat bench service` through one vLLM this way."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.inference.tiny_model import save_tiny_gemma
from tests.remote.upstreams import (
    VLLM_ATTACH_PREFIX,
    VLLM_MODEL_DIR_ENV,
    VLLM_PYTHON_ENV,
    Upstream,
    start_engine_upstream,
    start_vllm_upstream,
)

SEPARATOR = "---"


def start(kind: str, workdir: Path) -> Upstream:
    if kind == "vllm":
        python, model_dir = os.environ.get(VLLM_PYTHON_ENV), os.environ.get(VLLM_MODEL_DIR_ENV)
        if not python or not model_dir:
            raise SystemExit(f"set {VLLM_PYTHON_ENV} and {VLLM_MODEL_DIR_ENV}")
        return start_vllm_upstream(workdir, python, Path(model_dir))
    return start_engine_upstream(workdir, save_tiny_gemma(workdir / "tiny-gemma"))


def split_commands(words: list[str]) -> list[list[str]]:
    commands: list[list[str]] = [[]]
    for word in words:
        if word == SEPARATOR:
            commands.append([])
        else:
            commands[-1].append(word)
    return [command for command in commands if command]


def environ_for(upstream: Upstream, values: dict[str, str]) -> dict[str, str]:
    environ = {
        **os.environ,
        **{f"LEDGERCHAT_UPSTREAM_{name.upper()}": value for name, value in values.items()},
    }
    if upstream.kind == "vllm":
        environ[f"{VLLM_ATTACH_PREFIX}URL"] = upstream.base_url
        environ[f"{VLLM_ATTACH_PREFIX}API_KEY"] = upstream.api_key
        environ[f"{VLLM_ATTACH_PREFIX}LOG"] = str(upstream.log_path)
    return environ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("vllm", "engine"))
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS... [--- ...]")
    args = parser.parse_args(argv)
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    commands = split_commands(words)
    if not commands:
        parser.error("give a command after --")
    with tempfile.TemporaryDirectory(prefix=f"with-{args.kind}-") as directory:
        started_at = time.monotonic()
        upstream = start(args.kind, Path(directory))
        print(
            f"with_upstream: {args.kind} healthy at {upstream.base_url} after "
            f"{time.monotonic() - started_at:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        try:
            values = {
                "url": upstream.base_url,
                "v1_url": upstream.v1_url,
                "api_key": upstream.api_key,
                "model": upstream.model,
            }
            environ = environ_for(upstream, values)
            codes = []
            for command in commands:
                filled = [part.format(**values) for part in command]
                code = subprocess.run(filled, env=environ, check=False).returncode
                print(f"with_upstream: exit {code}: {' '.join(command)}", file=sys.stderr)
                codes.append(code)
            return next((code for code in codes if code != 0), 0)
        finally:
            upstream.stop()


if __name__ == "__main__":
    raise SystemExit(main())
