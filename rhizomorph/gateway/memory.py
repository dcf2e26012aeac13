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
wave pin arenas of the wave. benchmarks/arena_census.py names them. The worst were the event
loop's free lists (asyncio's future iterators, uvloop's handles: ~750 objects of the wave's last
moments) and CPython's floats: ``FreeLists`` empties them with a reserve set aside at start,
whose objects keep what they point to from start (the timer handles' times). Also: the struct
module's cache (a ``Struct`` per format first used during the wave), the reclaimer's own counts
and times and the counts a departure adds to (unboxed, here and in stats.py), a loop variable
that kept the last client alive and the write watch's sleep, pending after a wave (clients.py).
What stays is reused by the next connections; benchmarks/README.md ("After 5000 connections
close") lists what still pins arenas. With ``Config.worker_allocator = "malloc"`` the workers' objects
come from glibc's heap instead, whose free pages the trim returns, at a CPU cost per message.
"""

from __future__ import annotations

import array
import asyncio
import contextvars
import ctypes
import ctypes.util
import functools
import gc
import logging
import math
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, overload

log = logging.getLogger("rhizomorph.memory")

THRESHOLD = 500
DELAY = 1.0
MAX_WAIT = 10.0
MIN_INTERVAL = 10.0


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):  # not glibc
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_LIBC = _glibc()
_TRIM: Callable[[], object] | None = None if _LIBC is None else functools.partial(_LIBC.malloc_trim, 0)

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: The heap of a gateway worker: freed memory at its top is given back to the system only past
#: this many bytes, and blocks up to ``HEAP_MMAP_THRESHOLD`` come from the heap, not from a
#: mapping of their own. glibc's own thresholds follow the largest block freed (twice a
#: 256 KiB chunk of hypha-rpc's, ~0.5 MiB): a worker carrying large messages then gives pages
#: back and takes them again, zeroed by the kernel, for every few chunks (benchmarks/router_cpu.md,
#: "The heap's thresholds"). A wave of departures still trims the heap down (``collect_and_trim``).
HEAP_TRIM_THRESHOLD = 64 << 20
HEAP_MMAP_THRESHOLD = 4 << 20


def tune_heap() -> bool:
    """Fix the process's heap thresholds (``HEAP_TRIM_THRESHOLD``, ``HEAP_MMAP_THRESHOLD``);
    False where the C library is not glibc's."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)) and bool(
        _LIBC.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
    )


#: The lengths of the free lists emptied: asyncio's future iterators (CPython 3.11), uvloop's
#: ``Handle`` and ``TimerHandle`` (each), CPython's floats (3.11). Exact: one more than a list
#: holds would be allocated anew when the reserve is taken back, wherever the allocator has room
#: (a wave's arena).
FUTURE_ITERS = 255
HANDLES = 250
FLOATS = 100
#: Seconds between taking the loop's handles and freeing them: the loop lets go of a cancelled
#: handle on its next iteration.
SETTLE = 0.1
#: A reserve timer handle's delay (it is cancelled at once).
_TIMER_DELAY = 3600.0


def _noop() -> None:
    pass


_CONTEXT = contextvars.Context()


def take_soon_handles(loop: asyncio.AbstractEventLoop) -> list[Any]:
    """``HANDLES`` cancelled ``call_soon`` handles: uvloop takes them from its ``Handle`` free list
    first (the loop lets go of a cancelled handle on its next iteration; the caller keeps them)."""
    context = _CONTEXT  # one for all: else each handle copies the current one, a new object
    handles: list[Any] = [loop.call_soon(_noop, context=context) for _ in range(HANDLES)]
    for handle in handles:
        handle.cancel()
    return handles


def take_timer_handles(loop: asyncio.AbstractEventLoop, times: list[float] | None = None) -> list[Any]:
    """``HANDLES`` cancelled ``call_later`` handles (uvloop's ``TimerHandle`` free list first).

    Each keeps its time, a float made by uvloop. Given ``times`` (float objects, emptied), those
    become the handles' times: they are put on CPython's float free list, emptied first, just
    before the handles are made, which take them from there. Else a reserve taken back after a
    wave would keep 250 new floats, in the pools the wave left partly used."""
    context = _CONTEXT
    handles: list[Any] = []
    while len(handles) < HANDLES:
        count = min(FLOATS, HANDLES - len(handles))
        held = take_floats() if times else None  # the float free list emptied (and what it held kept)
        if times:
            del times[-count:]  # the last references: onto the float free list
        handles += [loop.call_later(_TIMER_DELAY, _noop, context=context) for _ in range(count)]
        del held  # back onto the free list
    for handle in handles:
        handle.cancel()
    return handles


def take_floats() -> list[float]:
    """``FLOATS`` new float objects: CPython's float free list's first, so it is left empty."""
    return [i + 0.5 for i in range(FLOATS)]


class FreeLists:
    """Empties the free lists a wave leaves behind, with objects set aside at start.

    After a wave the free lists (asyncio's future iterators, uvloop's handles, CPython's floats)
    hold the wave's last objects, scattered over its arenas, and each keeps its arena (Python's
    allocator returns an arena only when all of it is free). Taking them out and freeing them
    needs the lists full, or they go straight back: so ``warm`` sets aside as many objects of
    each kind at start, in the arenas that the worker keeps anyway. ``swap`` gives those back
    (the lists are full), frees the wave's (they do not fit), and takes the reserve out again:
    the lists are left empty, and refill with objects allocated after the wave. The reserve
    keeps what its objects point to from start too: one future for the iterators, and the timer
    handles' times (``take_timer_handles``)."""

    def __init__(self) -> None:
        self.iters: list[Any] = []
        self.soon: list[Any] = []
        self.timers: list[Any] = []
        self.floats: list[float] = []
        self.warmed = False
        self._future: asyncio.Future[None] | None = None

    def warm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.warmed:
            return
        self.warmed = True
        self._future = loop.create_future()
        self._future.cancel()  # only iterated over by nobody: the iterators keep it
        self.iters = self._take_iters()
        if _has_handle_free_lists(loop):
            self.soon = take_soon_handles(loop)
            self.timers = take_timer_handles(loop)
        self.floats = take_floats()

    def _take_iters(self) -> list[Any]:
        """``FUTURE_ITERS`` of the iterators ``await`` takes from a free list of the C
        ``_asyncio`` module (255 in CPython 3.11); no call empties that list."""
        future = self._future
        assert future is not None
        return [future.__await__() for _ in range(FUTURE_ITERS)]

    def take_handles(self, loop: asyncio.AbstractEventLoop) -> list[Any]:
        """The wave's handles out of uvloop's lists; ``swap`` them once the loop let go (a
        loop iteration)."""
        if not (self.warmed and _has_handle_free_lists(loop)):
            return []
        return take_soon_handles(loop) + take_timer_handles(loop)

    def swap(self, loop: asyncio.AbstractEventLoop, wave_handles: list[Any]) -> None:
        if not self.warmed:
            return
        # The reserve's lists are kept (extended, not replaced): a list made now would be one of
        # the objects left in the wave's arenas.
        wave_iters = self._take_iters()
        self.iters.clear()  # the reserve into the free list: full
        del wave_iters[:]  # the wave's: freed
        self.iters += self._take_iters()  # the reserve out again
        if wave_handles:
            times = [handle.when() for handle in self.timers]  # the reserve's, kept for the new ones
            self.soon.clear()
            self.timers.clear()
            del wave_handles[:]
            self.soon += take_soon_handles(loop)
            self.timers += take_timer_handles(loop, times)
        wave_floats = take_floats()
        self.floats.clear()
        del wave_floats[:]
        self.floats += take_floats()


def _has_handle_free_lists(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")


#: The worker's (``warm`` once its loop runs: rhizomorph/gateway/server.py).
FREE_LISTS = FreeLists()


def reclaim() -> None:
    """One full collection (the wave's cycles), the free lists the wave filled emptied, caches
    that keep objects made during the wave cleared, then the C heap's free pages back to the
    system (where glibc)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        collect_and_trim()
        return
    gc.collect()  # first: what the wave's cycles held goes to the free lists, which are emptied next
    wave_handles = FREE_LISTS.take_handles(loop)
    loop.call_later(SETTLE, collect_and_trim, wave_handles, loop)


def collect_and_trim(wave_handles: list[Any] | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
    started = time.perf_counter()
    if loop is not None:
        FREE_LISTS.swap(loop, wave_handles or [])
    # The type attribute cache holds the attribute names it was last asked for: names built
    # at run time during the wave (``getattr(module, "name")`` from C) would stay. The struct
    # module caches a ``Struct`` per format first used: websockets' close code ("!H") is first
    # packed when a wave closes.
    sys._clear_type_cache()
    struct._clearcache()  # type: ignore[attr-defined]  # in CPython since 2.x, not in the stubs
    found = gc.collect()
    if _TRIM is not None:
        _TRIM()
    log.debug("reclaimed %d objects in %.1f ms", found, (time.perf_counter() - started) * 1000)


class UnboxedCount:
    """A read-only int attribute kept in its owner's ``_counts`` array, at ``slot``: a count kept
    as an int object, made anew at each change, would leave its last value in whatever arena had
    room then (a wave's)."""

    def __init__(self, slot: int) -> None:
        self.slot = slot

    @overload
    def __get__(self, owner: None, kind: type) -> UnboxedCount: ...

    @overload
    def __get__(self, owner: object, kind: type | None = None) -> int: ...

    def __get__(self, owner: object, kind: type | None = None) -> int | UnboxedCount:
        if owner is None:
            return self
        return int(owner._counts[self.slot])  # type: ignore[attr-defined]


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
        # Counts and times unboxed: an int or float object the reclaimer keeps from a wave (the
        # last departure's time, 5000 departures) would sit in one of the wave's arenas and keep it.
        self._counts = array.array("q", [0, 0, 0])  # departed since the last run, departures, runs
        self._times = array.array("d", [math.nan, 0.0, 0.0])  # last run (nan: none), wave start, last departure
        #: The last run was a wave's (``threshold`` departures): its stragglers, departing after
        #: it (a disconnect waits for the registry's release), are owed one more run, however few.
        self._tail_owed = False
        self._timer: asyncio.TimerHandle | None = None

    departed_since = UnboxedCount(0)
    #: Departures since the worker started (benchmarks/idle_memory.py waits on them).
    departures = UnboxedCount(1)
    runs = UnboxedCount(2)

    def departed(self) -> None:
        """A client left this worker."""
        counts, times = self._counts, self._times
        now = times[2] = self._clock()
        counts[0] += 1
        counts[1] += 1
        if self._timer is not None or (counts[0] < self.threshold and not self._tail_owed):
            return
        times[1] = now
        wait = self.delay
        if not math.isnan(times[0]):
            wait = max(wait, times[0] + self.min_interval - now)
        self._timer = asyncio.get_running_loop().call_later(wait, self._run)

    def _run(self) -> None:
        counts, times = self._counts, self._times
        now = self._clock()
        quiet = now - times[2]
        if quiet < self.delay and now - times[1] < self.max_wait:
            self._timer = asyncio.get_running_loop().call_later(self.delay - quiet, self._run)
            return  # still departing: wait for the wave to end
        self._timer = None
        self._tail_owed = counts[0] >= self.threshold
        counts[0] = 0
        times[0] = now
        counts[2] += 1
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
