"""Keeping a benchmark's peer server off the CPU while the engine is measured:
`ledgerchat bench inference --peer-pid PID` stops that process and every process under it
(SIGSTOP) for the engine's rounds and lets them run again (SIGCONT) for the peer's own. On a
machine with few cores an idle server is not idle: vLLM's workers busy-poll, and a torch op
with two threads waits for its slower thread, so a peer left running slows the engine's
rounds far more than its own CPU share says (docs/benchmarks.md)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

_PROC = Path("/proc")
# A process tree deeper than this is not a server's workers; stop walking.
MAX_TREE_DEPTH = 16


class PeerPauseError(RuntimeError):
    """The peer's processes cannot be signalled (no such process, not ours, no /proc)."""


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, parents before children (Linux: /proc children lists)."""
    if not (_PROC / str(pid)).exists():
        raise PeerPauseError(f"no process {pid}")
    found: list[int] = []
    level = [pid]
    for _ in range(MAX_TREE_DEPTH):
        if not level:
            break
        found += level
        level = [child for parent in level for child in _children(parent) if child not in found]
    return found


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:  # it ended meanwhile
        return children
    for task in tasks:
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        children += [int(part) for part in text.split()]
    return children


def is_stopped(pid: int) -> bool:
    """True when the process is stopped by a signal (state T in /proc)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] == "T"


class PeerPause:
    """Stops and continues one process tree, read afresh at each stop (a server may start
    workers late). `continue_all` is safe to call at any time, also twice.

    A peer found stopped (an idle vLLM stopped by hand so that it does not busy-poll) is
    continued at once, so that it can be reached, and `restore` stops it again at the end."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._stopped: list[int] = []
        tree = process_tree(pid)  # fails early when there is no such process
        self.found_stopped = is_stopped(pid)
        if self.found_stopped:
            self._stopped = tree
            self.continue_all()

    @property
    def stopped(self) -> bool:
        return bool(self._stopped)

    def stop_all(self) -> None:
        if self._stopped:
            return
        tree = process_tree(self.pid)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:  # a worker that just ended
                continue
            except PermissionError as exc:
                self._stopped.append(pid)
                self.continue_all()
                raise PeerPauseError(f"cannot stop process {pid}: {exc}") from None
            self._stopped.append(pid)

    def continue_all(self) -> None:
        stopped, self._stopped = self._stopped, []
        for pid in reversed(stopped):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                continue

    def restore(self) -> None:
        """Leave the peer as it was found: running, or stopped."""
        if self.found_stopped:
            self.stop_all()
        else:
            self.continue_all()
