"""`bench inference --peer-pid`: the peer's whole process tree is stopped during the engine's
rounds and runs again for its own, on real processes (a parent and the worker it started)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.peer_pause import PeerPause, PeerPauseError, process_tree

# The parent starts a worker, prints its pid, then waits; both sleep until killed.
PARENT = (
    "import subprocess, sys, time\n"
    "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print(worker.pid, flush=True)\n"
    "time.sleep(600)\n"
)
# Signals are delivered asynchronously: how long a state change may take to show in /proc.
STATE_DEADLINE_S = 10.0


def _state(pid: int) -> str:
    """The process state letter from /proc (T: stopped)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def _wait_for_state(pids: list[int], stopped: bool) -> bool:
    deadline = time.monotonic() + STATE_DEADLINE_S
    while time.monotonic() < deadline:
        if all((_state(pid) == "T") == stopped for pid in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def server_tree() -> Iterator[tuple[int, int]]:
    """(parent pid, worker pid) of a small process tree, killed afterwards."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    yield parent.pid, worker
    for pid in (worker, parent.pid):
        subprocess.run(["kill", "-CONT", str(pid)], check=False)
        subprocess.run(["kill", "-KILL", str(pid)], check=False)
    parent.wait(timeout=30)


class TestPeerPause:
    def test_tree_lists_parent_then_worker(self, server_tree: tuple[int, int]) -> None:
        """The tree is read from /proc: the given process first, then what it started."""
        parent, worker = server_tree
        assert process_tree(parent) == [parent, worker]

    def test_stop_and_continue_the_whole_tree(self, server_tree: tuple[int, int]) -> None:
        """stop_all stops the parent and its worker; continue_all lets both run again."""
        parent, worker = server_tree
        pause = PeerPause(parent)
        pause.stop_all()
        assert pause.stopped
        assert _wait_for_state([parent, worker], stopped=True)
        pause.continue_all()
        assert not pause.stopped
        assert _wait_for_state([parent, worker], stopped=False)
        pause.continue_all()  # harmless when nothing is stopped

    def test_no_such_process(self) -> None:
        """A pid that names no process is refused before anything runs."""
        with pytest.raises(PeerPauseError, match="no process"):
            PeerPause(2**22 + 1)
