"""How long a thread waited for a core: what a loaded machine, not the code under test, adds.

A latency bound checked on a shared 2-core machine fails whenever the machine is oversubscribed:
every thread on the path waits for a core, and round trips grow whatever the router does. Linux
counts that wait per thread (``/proc/<pid>/task/<tid>/schedstat``, its second field: ns spent
runnable on a run queue). A round trip less the waits of the threads that carry it is what it
would have taken with a core free for each; a router busy with other work, or stopped (a
stopped thread is not runnable), still shows in it in full.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def run_delay(schedstat: str) -> float:
    """Seconds spent waiting for a core, from a schedstat line (``on-cpu-ns wait-ns slices``)."""
    return int(schedstat.split()[1]) / 1e9


def cpu_time(schedstat: str) -> float:
    """Seconds on a core, from a schedstat line."""
    return int(schedstat.split()[0]) / 1e9


def busiest(before: Mapping[int, float], after: Mapping[int, float]) -> int:
    """The thread that spent the most time on a core between two readings of ``cpu_times``."""
    return max(after, key=lambda tid: after[tid] - before.get(tid, 0.0))


def cpu_times(pid: int) -> dict[int, float]:
    """Each thread of ``pid``: seconds on a core so far."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            times[int(task.name)] = cpu_time((task / "schedstat").read_text())
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            continue
    return times


class Waits:
    """Reads the run-queue waits of some threads (``(pid, tid)``), summed, in seconds."""

    def __init__(self, *threads: tuple[int, int]) -> None:
        self._paths = [Path(f"/proc/{pid}/task/{tid}/schedstat") for pid, tid in threads]

    def __call__(self) -> float:
        return sum(run_delay(path.read_text()) for path in self._paths)
