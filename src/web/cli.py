"""The `ledgerchat` command: one argparse tree that each package adds its subcommands to.

`web` is the only package allowed to know about both `ledger` and `inference`, so the
dispatcher lives here. Each package exposes `register(subparsers)` in its own `cli` module;
a subcommand sets `handler` (a callable taking the parsed args and returning an exit code).
Benchmarks share one `bench` group: a module may also expose `register_bench(bench_subparsers)`
to add `ledgerchat bench <name>`; likewise `register_eval(eval_subparsers)` adds
`ledgerchat eval <name>` (quality checks such as `eval replies`).
Exit codes: 0 success, 1 a finding (e.g. audit violations), 2 usage or environment errors.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import cast

from web.logging import configure_logging
from web.settings import SettingsError, load_settings

# Modules that contribute subcommands, in help order. A module that is not importable yet is
# skipped so that the command keeps working while the packages grow.
_COMMAND_MODULES = (
    "web.commands",
    "web.billing_commands",
    "ledger.cli",
    "inference.cli",
    "web.engine_cli",
    "web.bench_cli",
    "web.receipt_commands",
)

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ledgerchat",
        description="Self-hosted chat for Gemma 3 models, paid for from a credit ledger.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    bench = subparsers.add_parser("bench", help="run a benchmark and print its figures")
    bench_subparsers = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    evaluation = subparsers.add_parser("eval", help="run a quality check and print its figures")
    eval_subparsers = evaluation.add_subparsers(dest="evaluation", metavar="CHECK")
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
        register_bench = getattr(module, "register_bench", None)
        if register_bench is not None:
            register_bench(bench_subparsers)
        register_eval = getattr(module, "register_eval", None)
        if register_eval is not None:
            register_eval(eval_subparsers)
    return parser


def load_environment() -> None:
    """Read the settings once (`.env` under the environment), so that a malformed value stops
    every command with one line; then put the `.env` values and the paths derived from
    LEDGERCHAT_DATA_DIR into the process environment (variables already set win), so that every
    command (`audit`, `models`, `serve`...) reads the same settings as `serve`."""
    for name, value in load_settings().environ.items():
        os.environ.setdefault(name, value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        load_environment()
    except (SettingsError, OSError, UnicodeDecodeError) as exc:
        print(f"ledgerchat: error: {exc}", file=sys.stderr)
        return 2
    handler = cast("Handler | None", getattr(args, "handler", None))
    # Logs go to stderr so that a command's own output (tables, --json, CSV) stays clean on
    # stdout; `serve` raises the level to its configured one when it starts.
    configure_logging("warning")
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
