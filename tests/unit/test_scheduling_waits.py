"""Reading the kernel's per-thread scheduling counters (tests/scheduling.py)."""

from __future__ import annotations

import os
import threading
import time

from pytest import approx

from tests.scheduling import busiest, cpu_time, cpu_times, run_delay


def test_a_schedstat_line_reads_as_seconds_on_a_core_and_waiting_for_one():
    assert cpu_time("493936 463559 2\n") == approx(0.000493936)
    assert run_delay("171526840 12504141 393\n") == approx(0.012504141)


def test_the_busiest_thread_is_the_one_whose_time_on_a_core_grew_most():
    assert busiest({1: 5.0, 2: 1.0}, {1: 5.1, 2: 1.5, 3: 0.2}) == 2
    assert busiest({1: 5.0}, {1: 5.0, 3: 0.2}) == 3  # a thread new since the first reading


def test_a_spinning_thread_is_found_busiest_and_its_counters_move():
    stop = threading.Event()
    ids: list[int] = []

    def spin() -> None:
        ids.append(threading.get_native_id())
        while not stop.is_set():
            pass

    before = cpu_times(os.getpid())
    spinner = threading.Thread(target=spin)
    spinner.start()
    time.sleep(0.3)
    after = cpu_times(os.getpid())
    stop.set()
    spinner.join()
    assert busiest(before, after) == ids[0]
