"""Run one command against a freshly started upstream, then stop it:
`python -m tests.remote.with_upstream vllm|engine -- COMMAND ARGS...`.

In the arguments `{url}` (no /v1), `{v1_url}`, `{api_key}` and `{model}` are replaced by the
upstream's; the command also gets them as LEDGERCHAT_UPSTREAM_URL, _V1_URL, _API_KEY, _MODEL.
The vLLM kind reads LEDGERCHAT_TEST_VLLM_PYTHON and LEDGERCHAT_TEST_VLLM_MODEL_DIR as the
fixtures do. The nox `vllm` session runs `ledgerchat bench service` through it this way."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.inference.tiny_model import save_tiny_gemma
from tests.remote.upstreams import (
    VLLM_MODEL_DIR_ENV,
    VLLM_PYTHON_ENV,
    Upstream,
    start_engine_upstream,
    start_vllm_upstream,
)


def start(kind: str, workdir: Path) -> Upstream:
    if kind == "vllm":
        python, model_dir = os.environ.get(VLLM_PYTHON_ENV), os.environ.get(VLLM_MODEL_DIR_ENV)
        if not python or not model_dir:
            raise SystemExit(f"set {VLLM_PYTHON_ENV} and {VLLM_MODEL_DIR_ENV}")
        return start_vllm_upstream(workdir, python, Path(model_dir))
    return start_engine_upstream(workdir, save_tiny_gemma(workdir / "tiny-gemma"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("vllm", "engine"))
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    with tempfile.TemporaryDirectory(prefix=f"with-{args.kind}-") as directory:
        upstream = start(args.kind, Path(directory))
        try:
            values = {
                "url": upstream.base_url,
                "v1_url": upstream.v1_url,
                "api_key": upstream.api_key,
                "model": upstream.model,
            }
            environ = {
                **os.environ,
                **{f"LEDGERCHAT_UPSTREAM_{name.upper()}": value for name, value in values.items()},
            }
            filled = [part.format(**values) for part in command]
            print(f"with_upstream: {args.kind} at {upstream.base_url}", file=sys.stderr)
            return subprocess.run(filled, env=environ, check=False).returncode
        finally:
            upstream.stop()


if __name__ == "__main__":
    raise SystemExit(main())
