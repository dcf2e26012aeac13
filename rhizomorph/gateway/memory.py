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
wave pin arenas of the wave. The worst pinners are the event loop's free lists (asyncio's future
iterators, uvloop's handles), which the reclaim renews before it collects. What stays is reused
by the next connections; after a wave of 5000 (benchmarks/README.md) it is ~35 MB of arenas
held by a few blocks each (67 arenas against 33, the same bytes allocated), most of them not
objects the collector sees. With ``Config.worker_allocator = "malloc"`` the workers' objects come
from glibc's heap instead, whose free pages the trim returns, at a CPU cost per message; both
measured in benchmarks/README.md, "After 5000 connections close".
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

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

#: At least the length of the free lists renewed: asyncio's future iterators (255 in CPython
#: 3.11), uvloop's ``Handle`` and ``TimerHandle`` (250 each).
FREE_LIST = 256
#: Seconds between renewing the loop's handles and the collection: the loop lets go of a
#: cancelled handle on its next iteration.
SETTLE = 0.1


def _noop() -> None:
    pass


def renew_loop_handles(loop: asyncio.AbstractEventLoop) -> list[list[Any]]:
    """Take the handles uvloop keeps in its free lists and as many new ones, all cancelled.

    uvloop keeps the last ``Handle`` (``call_soon``) and ``TimerHandle`` (``call_later``) objects
    freed in a free list each, for reuse; after a wave those are scattered over its arenas and
    each keeps its arena (Python's allocator returns an arena only when all of it is free). The
    new ones come from the fullest arenas, where Python allocates first. Returns ``[old, new]``:
    once the loop let go of them, drop ``new`` first (it refills the free lists) and ``old``
    last (the lists are full: freed). On asyncio's loop, which has no such lists, it only costs
    the handles."""
    lists: list[list[Any]] = []
    for _ in ("old", "new"):
        handles: list[Any] = [loop.call_soon(_noop) for _ in range(FREE_LIST)]
        handles += [loop.call_later(3600.0, _noop) for _ in range(FREE_LIST)]
        for handle in handles:
            handle.cancel()
        lists.append(handles)
    return lists


def renew_future_iter_free_list(loop: asyncio.AbstractEventLoop) -> None:
    """Replace the iterators in asyncio's free list by new ones.

    Every ``await`` of a future takes an iterator from a free list in the C ``_asyncio`` module
    and puts it back after; the last ones freed in a wave stay there, scattered over the wave's
    arenas. No call empties that list, so: take all of them, allocate as many new ones, give
    the new ones back first (the list keeps them) and the old ones last (the list is full)."""
    future = loop.create_future()
    old = [future.__await__() for _ in range(FREE_LIST)]
    new = [future.__await__() for _ in range(FREE_LIST)]
    del new
    del old
    future.cancel()


def reclaim() -> None:
    """Renew the free lists that hold the wave's memory; then, once the loop let go of its
    handles, one full collection and the C heap's free pages back to the system (where glibc)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        collect_and_trim()
        return
    held = renew_loop_handles(loop)
    loop.call_later(SETTLE, collect_and_trim, held, loop)


def collect_and_trim(held: list[list[Any]] | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
    started = time.perf_counter()
    while held:
        held.pop()  # the new handles first, then the old
    if loop is not None:
        renew_future_iter_free_list(loop)
    # The type attribute cache holds the attribute names it was last asked for: names built
    # at run time during the wave (``getattr(module, "name")`` from C) would stay.
    sys._clear_type_cache()
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
        #: Departures since the worker started (benchmarks/idle_memory.py waits on them).
        self.departures = 0
        self.runs = 0
        self._last_run: float | None = None
        #: The last run was a wave's (``threshold`` departures): its stragglers, departing after
        #: it (a disconnect waits for the registry's release), are owed one more run, however few.
        self._tail_owed = False
        self._wave_started = 0.0
        self._last_departure = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def departed(self) -> None:
        """A client left this worker."""
        now = self._last_departure = self._clock()
        self.departed_since += 1
        self.departures += 1
        if self._timer is not None or (self.departed_since < self.threshold and not self._tail_owed):
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
        self._tail_owed = self.departed_since >= self.threshold
        self.departed_since = 0
        self._last_run = now
        self.runs += 1
        self._collect()

    @property
    def settled(self) -> bool:
        """No reclaim pending, and none owed: fewer than ``threshold`` departures since the last
        (and, after a wave's, none of its stragglers)."""
        return self._timer is None and self.departed_since < self.threshold

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
