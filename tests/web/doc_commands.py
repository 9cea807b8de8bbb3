"""What README.md and docs/*.md tell a reader to run, and which files they name: the commands
(each line of a ```bash/sh block, command lines of other blocks, and inline code that starts
like a command) classified as run by the tests, not run for a stated reason, a synopsis with
placeholders, a bare reference to a command, or a sample of output; and the repository paths
the text mentions. Pure text and argparse work, no process is started here."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
from collections.abc import Iterator
from enum import Enum
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = (REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")))

FENCE = re.compile(r"^\s*```\s*([\w+-]*)\s*$")
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})
# `VAR=value ` prefixes, then a program a reader could type.
ENV_PREFIX = re.compile(r"^(?:[A-Z][A-Z0-9_]*=\S*\s+)+")
COMMAND_START = re.compile(
    r"^(?:[A-Z][A-Z0-9_]*=\S*\s+)*(?:ledgerchat|python3?|\.venv/\S+|\.nox/\S+|nox|pip|uv)(?:\s|$)"
)
PROGRAM_NAMES = frozenset({"ledgerchat"})
# A comment line in a block that makes a claim the test checks by running the line above again.
SAME_AGAIN = re.compile(r'^#\s*the same command again prints "(?P<text>[^"]+)"')
# Lines that show what `ledgerchat serve` prints, not commands.
OUTPUT_SAMPLES = ("ledgerchat ready:", "ledgerchat serving without a model:")
PLACEHOLDER_MARKS = ("[", "]", "<", ">", "|", "...")

# Commands the suite does not run, each with the reason. Matched on the command's words
# (env assignments removed) by prefix.
NOT_RUN: dict[tuple[str, ...], str] = {
    ("python3", "dev.py", "tests"): "runs the test suite itself: it would recurse",
    ("python3", "dev.py", "props"): "the ledger's state machine with thousands of examples: "
    "minutes; the suite runs the same tests with fewer",
    ("python3", "dev.py", "bench"): "benchmarks take minutes on the real model and PostgreSQL; "
    "docs/benchmarks.md has their figures",
    ("ledgerchat", "bench"): "benchmarks take minutes on the real model and PostgreSQL; "
    "docs/benchmarks.md has their figures",
    ("python", "-m", "web.config_docs"): "rewrites docs/configuration.md; "
    "tests/test_settings.py checks the file is what it writes",
    ("python", "-m", "tests.remote.with_upstream"): "a benchmark through a remote engine it "
    "starts: minutes; docs/benchmarks.md has its figures",
    ("python3", "dev.py", "vllm"): "installs vLLM (~18 min, 3.5 GB) and starts it (minutes): an "
    "optional session of its own; docs/benchmarks.md has its figures",
    ("nox", "-s", "vllm"): "installs vLLM (~18 min, 3.5 GB) and starts it (minutes): an "
    "optional session of its own; docs/benchmarks.md has its figures",
    ("ledgerchat", "engine", "serve"): "serves until stopped and needs a bearer secret; "
    "tests/remote starts it as a real process with one (test_engine_server.py)",
    ("pip", "install"): "installs the project into an environment of one's own: minutes",
    ("ledgerchat", "eval", "replies"): "the real 270M over 25-40 prompts takes minutes; "
    "tests/inference/test_replies_eval.py runs the same evaluation",
    (".nox/serve/bin/python", "tests/ui/docs_screenshots.py"): "drives a browser against a "
    "server running the bundled model and rewrites docs/screenshots/",
}
# Environment assignments that make a command not runnable here, with the reason.
NOT_RUN_ENV = {"LEDGERCHAT_REINSTALL": "reinstalls the project into .nox/serve: minutes"}
# Paths the docs name that are made at run time, not kept in the repository.
RUNTIME_PATHS = {
    "failure.png": "written by a failing browser test under artifacts/ui/",
    "tokenizer.json": "a converted model's file in the model cache",
    "config.json": "a converted model's file in the model cache",
    "generation_config.json": "a converted model's file in the model cache",
    "tokenizer_config.json": "a converted model's file in the model cache",
}
PATH_SUFFIXES = (".py", ".md", ".toml", ".txt", ".png", ".jinja", ".json", ".sh", ".mako")
SKIPPED_DIRS = frozenset({".git", ".nox", ".nox-bootstrap", ".venv", "artifacts", "__pycache__"})


class Kind(Enum):
    RUN = "run"
    NOT_RUN = "not run"
    SYNOPSIS = "synopsis"  # placeholders: its subcommand and options are checked
    REFERENCE = "reference"  # a command named in prose without its arguments
    OUTPUT = "output"


@dataclasses.dataclass(frozen=True)
class DocCommand:
    text: str
    where: str  # "docs/operations.md:82"
    in_block: bool
    env: tuple[tuple[str, str], ...]
    words: tuple[str, ...]
    check_again: str | None = None  # "the same command again prints" this


def _strip_comment(line: str) -> str:
    """The command as written, without a trailing `# comment` (a `#` outside quotes that
    starts a word)."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].strip()
    return line.strip()


def _command(text: str, where: str, in_block: bool) -> DocCommand:
    env: list[tuple[str, str]] = []
    prefix = ENV_PREFIX.match(text)
    rest = text
    if prefix:
        for assignment in prefix.group(0).split():
            name, _, value = assignment.partition("=")
            env.append((name, value))
        rest = text[prefix.end() :]
    try:
        words = tuple(shlex.split(rest))
    except ValueError:
        words = tuple(rest.split())
    return DocCommand(text, where, in_block, tuple(env), words)


def extract_commands(path: Path) -> list[DocCommand]:
    """Every command of one Markdown file, in order."""
    relative = path.relative_to(REPO_ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    commands: list[DocCommand] = []
    language: str | None = None
    prose: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if fence:
            language = None if language is not None else fence.group(1)
            continue
        if language is None:
            prose.append((number, line))
            continue
        stripped = line.strip()
        again = SAME_AGAIN.match(stripped)
        if again and commands and commands[-1].in_block:
            commands[-1] = dataclasses.replace(commands[-1], check_again=again.group("text"))
            continue
        command = _strip_comment(stripped)
        if not command:
            continue
        if language in SHELL_LANGUAGES or (language == "" and COMMAND_START.match(command)):
            commands.append(_command(command, f"{relative}:{number}", in_block=True))
    commands += _prose_commands(relative, prose)
    return commands


def _prose_commands(relative: str, prose: list[tuple[int, str]]) -> list[DocCommand]:
    """Inline code spans that start like a command (a span may run over a line break)."""
    text = "\n".join(line for _, line in prose)
    starts = [number for number, _ in prose]
    found = []
    for match in re.finditer(r"`([^`]+)`", text):
        span = " ".join(match.group(1).split())
        if COMMAND_START.match(span):
            line_index = text.count("\n", 0, match.start())
            found.append(_command(span, f"{relative}:{starts[line_index]}", in_block=False))
    return found


def all_commands() -> list[DocCommand]:
    return [command for path in DOC_FILES for command in extract_commands(path)]


# -- classification ------------------------------------------------------------------------
def nox_sessions() -> set[str]:
    source = (REPO_ROOT / "noxfile.py").read_text(encoding="utf-8")
    return set(re.findall(r"@nox\.session[^\n]*\ndef (\w+)\(", source))


def cli_words(command: DocCommand) -> tuple[str, ...] | None:
    """The `ledgerchat` arguments a command amounts to: `ledgerchat ARGS`, `python3 dev.py
    ledgerchat ARGS` and `python3 dev.py serve ARGS` (the serve session runs `ledgerchat serve`).
    None for anything else."""
    words = command.words
    if words[:1] == ("ledgerchat",):
        return words[1:]
    if words[:3] == ("python3", "dev.py", "ledgerchat"):
        return words[3:]
    if words[:3] == ("python3", "dev.py", "serve"):
        return ("serve", *words[3:])
    return None


def not_run_reason(command: DocCommand) -> str | None:
    for name, _ in command.env:
        if name in NOT_RUN_ENV:
            return NOT_RUN_ENV[name]
    for prefix, reason in NOT_RUN.items():
        if command.words[: len(prefix)] == prefix:
            return reason
    return None


def has_placeholders(command: DocCommand) -> bool:
    for word in (*command.words, *(value for _, value in command.env)):
        if any(mark in word for mark in PLACEHOLDER_MARKS):
            return True
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", word):
            return True
    return False


def classify(command: DocCommand, parser: argparse.ArgumentParser) -> tuple[Kind, str]:
    """The kind of a command and, when it is wrong, what is wrong ('' when nothing)."""
    if command.text.startswith(OUTPUT_SAMPLES):
        return Kind.OUTPUT, ""
    words = command.words
    if words[:2] == ("python3", "dev.py") and (len(words) < 3 or words[2] not in nox_sessions()):
        return Kind.RUN, f"`python3 dev.py` has no session {words[2:3]}"
    reason = not_run_reason(command)
    arguments = cli_words(command)
    if arguments is not None:
        problem = check_cli_words(parser, arguments)
        if problem:
            return Kind.RUN, problem
    if reason is not None:
        return Kind.NOT_RUN, ""
    if has_placeholders(command):
        return Kind.SYNOPSIS, ""
    if arguments is None and all(word.startswith("-") for word in words[1:]):
        return Kind.REFERENCE, ""  # `python3`, `python -O`: the program named in prose
    if arguments is None:
        return Kind.RUN, "no runner for this program: run it in the test or list it in NOT_RUN"
    if not arguments:
        return Kind.REFERENCE, ""
    parsed = parse_fully(parser, arguments)
    if parsed:
        return Kind.RUN, ""
    if command.in_block:
        return Kind.RUN, "`ledgerchat` refuses these arguments"
    return Kind.REFERENCE, ""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_cli_words(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> str:
    """The subcommand path exists and every `--option` named belongs to it ('' if so)."""
    current = parser
    path: list[str] = []
    for word in words:
        choices = _subparsers(current)
        if not choices or word.startswith("-"):
            break
        if word not in choices:
            if any(mark in word for mark in PLACEHOLDER_MARKS):
                break  # `list|pull`: the synopsis names several
            return f"`ledgerchat {' '.join(path)}` has no subcommand {word!r}"
        current = choices[word]
        path.append(word)
    known = {option for action in current._actions for option in action.option_strings}
    for word in words:
        option = word.strip("[]").split("=", 1)[0]
        if option.startswith("--") and option not in known:
            return f"`ledgerchat {' '.join(path)}` has no option {option}"
    return ""


def parse_fully(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> bool:
    with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args(list(words))
        return True
    return False


# -- paths ---------------------------------------------------------------------------------
def repository_paths() -> set[str]:
    """Every file and folder of the working tree (build and tool folders left out), posix."""
    found: set[str] = set()

    def walk(folder: Path) -> Iterator[Path]:
        for entry in folder.iterdir():
            if entry.name in SKIPPED_DIRS or entry.name.endswith(".egg-info"):
                continue
            yield entry
            if entry.is_dir() and not entry.is_symlink():
                yield from walk(entry)

    for entry in walk(REPO_ROOT):
        found.add(entry.relative_to(REPO_ROOT).as_posix())
    return found


def path_mentions(path: Path) -> list[tuple[str, str]]:
    """(mention, where) for each inline-code path and relative link of one Markdown file.
    A mention is a path when it has a known file suffix or starts with src/, tests/, docs/."""
    relative = path.relative_to(REPO_ROOT).as_posix()
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for span in re.findall(r"`([^`\s]+)`", line):
            is_path = re.fullmatch(r"[\w.@+*-]+(?:/[\w.@+*-]+)*/?", span) is not None
            named = span.endswith(PATH_SUFFIXES) or span.startswith(("src/", "tests/", "docs/"))
            if is_path and named:
                found.append((span, f"{relative}:{number}"))
        for link in re.findall(r"\]\(([^)\s]+)\)", line):
            if not link.startswith(("http://", "https://", "#", "mailto:")):
                found.append(("LINK " + link.split("#", 1)[0], f"{relative}:{number}"))
    return found


def mention_exists(mention: str, doc: Path, paths: set[str]) -> bool:
    """A link resolves from the document's folder; a path in code is found from the root,
    the document's folder, or as the tail of a repository path (a module named in the table
    of its package: `storage/sqlite.py`)."""
    if mention.startswith("LINK "):
        return (doc.parent / mention.removeprefix("LINK ")).exists()
    if mention in RUNTIME_PATHS:
        return True
    name = mention.rstrip("/").removeprefix("./")
    if (REPO_ROOT / name).exists() or (doc.parent / name).exists():
        return True
    if "*" in name:
        pattern = re.compile(re.escape(name).replace(r"\*", "[^/]*") + "$")
        return any(pattern.search(path) for path in paths)
    return any(path == name or path.endswith("/" + name) for path in paths)
