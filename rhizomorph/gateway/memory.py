"""Giving memory back after a wave of departures (benchmarks/idle_memory.py measures it).

A closed connection is not freed when its socket closes: websockets' connection objects sit in
reference cycles, which only the cyclic garbage collector frees, and a connection that lived a
while is in its oldest generation, which Python collects rarely (after the number of objects it
holds has grown by a quarter: in a Ray worker, hundreds of thousands). What is freed then stays
in the C heap (glibc keeps freed pages) unless it is trimmed. So once ``threshold`` clients have
left, ``Reclaimer`` waits for the wave to end (no departure for ``delay`` seconds, or
``max_wait`` seconds at most), then runs one full collection and trims the heap; at most once
per ``min_interval`` seconds, as a full collection pauses the worker's event loop. The router
counts a departure once its disconnect let go of the connection (after the registry's release),
so the trim comes after the wave's memory is freed.

What the trim cannot get back with Python's default allocator (pymalloc): it returns a 1 MiB
arena to the system only when every block in it is free, and a few objects that outlive the
wave keep most arenas of the wave (a worker stays 77–93 % above its baseline after 5000
connections closed; the memory is reused by the next connections). With
``Config.worker_allocator = "malloc"`` the workers' objects come from glibc's heap instead,
whose free pages the trim returns (16–20 % above), at a CPU cost per message measured in
benchmarks/README.md, "After 5000 connections close".
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("rhizomorph.memory")

THRESHOLD = 500
DELAY = 1.0
MAX_WAIT = 10.0
MIN_INTERVAL = 10.0


def _malloc_trim() -> Callable[[], None] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


_TRIM = _malloc_trim()


def reclaim() -> None:
    """One full collection, then the C heap's free pages back to the system (where glibc)."""
    started = time.perf_counter()
    found = gc.collect()
    if _TRIM is not None:
        _TRIM()
    log.debug("reclaimed %d objects in %.1f ms", found, (time.perf_counter() - started) * 1000)


class Reclaimer:
    def __init__(
        self,
        *,
        threshold: int = THRESHOLD,
        delay: float = DELAY,
        max_wait: float = MAX_WAIT,
        min_interval: float = MIN_INTERVAL,
        collect: Callable[[], None] = reclaim,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.delay = delay
        self.max_wait = max_wait
        self.min_interval = min_interval
        self._collect = collect
        self._clock = clock
        self.departed_since = 0
        self.runs = 0
        self._last_run: float | None = None
        self._wave_started = 0.0
        self._last_departure = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def departed(self) -> None:
        """A client left this worker."""
        now = self._last_departure = self._clock()
        self.departed_since += 1
        if self.departed_since < self.threshold or self._timer is not None:
            return
        self._wave_started = now
        wait = self.delay
        if self._last_run is not None:
            wait = max(wait, self._last_run + self.min_interval - now)
        self._timer = asyncio.get_running_loop().call_later(wait, self._run)

    def _run(self) -> None:
        now = self._clock()
        quiet = now - self._last_departure
        if quiet < self.delay and now - self._wave_started < self.max_wait:
            self._timer = asyncio.get_running_loop().call_later(self.delay - quiet, self._run)
            return  # still departing: wait for the wave to end
        self._timer = None
        self.departed_since = 0
        self._last_run = now
        self.runs += 1
        self._collect()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
