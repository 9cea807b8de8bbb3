"""The thread governor's rule, fed step times (no clock): it starts with fewer threads, tries
more now and then, switches only to what was clearly faster at the same batch size, probes
less often while probes lose, ends a probe at its first clearly slower step, and probes at
once when steps slow down."""

from __future__ import annotations

import itertools

from inference.threads import (
    COMPARED_STEPS,
    FIRST_PROBE_AFTER_STEPS,
    MAX_PROBE_INTERVAL_STEPS,
    PROBE_STEPS,
    ThreadChoice,
    ThreadGovernor,
    governor_for,
)

TWO_CORES = ThreadChoice.for_cores(2)


def run_steps(
    governor: ThreadGovernor, steps: int, rows: int, times: dict[int, float]
) -> list[int]:
    """`steps` decode steps of `rows` rows, each taking times[threads]; the counts used."""
    used = []
    for _ in range(steps):
        threads = governor.threads_for_step(rows)
        governor.record(threads, rows, times[threads])
        used.append(threads)
    return used


class TestThreadGovernor:
    def test_two_cores_choose_between_one_and_two(self) -> None:
        """On 2 cores the counts are 1 and 2; on 8, 7 and 8; on 1 there is no choice."""
        assert ThreadChoice(fewer=1, more=2) == TWO_CORES
        assert ThreadChoice.for_cores(8) == ThreadChoice(fewer=7, more=8)
        assert ThreadChoice.for_cores(1) == ThreadChoice(fewer=1, more=1)

    def test_quiet_machine_moves_to_more_threads(self) -> None:
        """Faster steps with 2 threads: after the first probe every step uses 2."""
        governor = ThreadGovernor(TWO_CORES)
        used = run_steps(governor, 100, rows=1, times={1: 0.040, 2: 0.030})
        assert used[:FIRST_PROBE_AFTER_STEPS] == [1] * FIRST_PROBE_AFTER_STEPS
        assert governor.current == 2
        assert used[-10:] == [2] * 10

    def test_contention_keeps_fewer_threads_and_probes_ever_less(self) -> None:
        """2 threads 6x slower: each probe ends after its first step and the gaps between
        probes double up to the limit."""
        governor = ThreadGovernor(TWO_CORES)
        used = run_steps(governor, 4000, rows=1, times={1: 0.040, 2: 0.240})
        assert governor.current == 1
        probes = [index for index, threads in enumerate(used) if threads == 2]
        gaps = [later - earlier for earlier, later in itertools.pairwise(probes)]
        assert gaps[:3] == [
            2 * FIRST_PROBE_AFTER_STEPS + 1,
            4 * FIRST_PROBE_AFTER_STEPS + 1,
            8 * FIRST_PROBE_AFTER_STEPS + 1,
        ]
        assert gaps[-1] == MAX_PROBE_INTERVAL_STEPS + 1

    def test_a_small_gain_does_not_switch(self) -> None:
        """2 threads only 3% faster: not worth the risk, the count stays at 1."""
        governor = ThreadGovernor(TWO_CORES)
        used = run_steps(governor, 200, rows=1, times={1: 0.040, 2: 0.0388})
        assert governor.current == 1
        assert used.count(2) > 0

    def test_slowdown_triggers_a_probe_back(self) -> None:
        """Once on 2 threads, steps turning 5x slower (another process took the core) bring
        a probe of 1 thread at once, which wins."""
        governor = ThreadGovernor(TWO_CORES)
        run_steps(governor, 40, rows=1, times={1: 0.040, 2: 0.030})
        assert governor.current == 2
        used = run_steps(governor, COMPARED_STEPS + PROBE_STEPS, rows=1, times={1: 0.045, 2: 0.150})
        assert governor.current == 1
        assert 1 in used

    def test_probe_with_a_changed_batch_decides_nothing(self) -> None:
        """A probe whose steps had another batch size than the steps before it is not
        compared: the count stays."""
        governor = ThreadGovernor(TWO_CORES)
        run_steps(governor, FIRST_PROBE_AFTER_STEPS, rows=1, times={1: 0.040, 2: 0.030})
        assert governor.threads_for_step(1) == 2 and governor.probing
        for rows in range(2, 2 + PROBE_STEPS):  # rows joined during the probe
            governor.record(2, rows, 0.010)
        assert not governor.probing
        assert governor.current == 1

    def test_tiny_steps_are_never_probed(self) -> None:
        """Steps of a few milliseconds are op dispatch: more threads are never tried."""
        governor = ThreadGovernor(TWO_CORES)
        used = run_steps(governor, 300, rows=1, times={1: 0.005, 2: 0.001})
        assert used == [1] * 300

    def test_no_governor_off_cpu_or_with_a_fixed_count(self) -> None:
        """A CUDA model, an operator's fixed LEDGERCHAT_INFERENCE_TORCH_THREADS or a model
        of a few megabytes: none."""
        assert governor_for("cuda", None, 2**30) is None
        assert governor_for("cpu", 2, 2**30) is None
        assert governor_for("cpu", None, 2**20) is None
