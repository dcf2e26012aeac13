"""rhizomorph/gateway/memory.py: one reclaim after a wave of departures, not one per client."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import inspect
import struct
import subprocess
import sys
import tracemalloc
import weakref
from typing import Any

import pytest

from rhizomorph.gateway import memory
from rhizomorph.gateway.memory import Reclaimer
from rhizomorph.protocol.close_codes import CloseCode
from tests.unit.test_router import FakeRegistry, call, join, make_router, settle


def reclaimer(runs: list[int], **timing: Any) -> Reclaimer:
    return Reclaimer(collect=lambda: runs.append(1), **timing)


async def test_a_wave_of_departures_is_reclaimed_once_after_it_ends():
    runs: list[int] = []
    # The wave's departures are 5 ms apart and the quiet spell that ends it is 0.3 s: a loaded
    # machine that stretches a 5 ms sleep past 0.3 s would end the wave early (seen at 20 ms).
    waves = reclaimer(runs, threshold=3, delay=0.3, max_wait=30.0, min_interval=0.0)

    for _ in range(2):
        waves.departed()
    await asyncio.sleep(0.5)
    assert runs == []  # under the threshold: nothing to give back

    for _ in range(10):
        waves.departed()
        await asyncio.sleep(0.005)  # still departing: not yet
    assert runs == []
    await asyncio.sleep(0.6)
    assert runs == [1] and waves.departed_since == 0


async def test_the_reclaimer_is_settled_only_once_the_wave_it_owes_was_reclaimed():
    runs: list[int] = []
    waves = reclaimer(runs, threshold=3, delay=0.05, max_wait=30.0, min_interval=0.0)
    assert waves.settled
    for _ in range(2):
        waves.departed()
    assert waves.settled and runs == []  # under the threshold: nothing is owed
    waves.departed()
    assert not waves.settled  # the wave's reclaim is pending
    await asyncio.sleep(0.2)
    assert runs == [1] and waves.settled and waves.departures == 3


async def test_departures_that_never_stop_are_reclaimed_after_max_wait():
    runs: list[int] = []
    waves = reclaimer(runs, threshold=1, delay=0.05, max_wait=0.1, min_interval=0.0)

    for _ in range(40):  # 0.2 s of departures, 5 ms apart
        waves.departed()
        await asyncio.sleep(0.005)
    assert len(runs) >= 1
    waves.close()


async def test_reclaims_are_spaced_by_the_minimum_interval():
    runs: list[int] = []
    waves = reclaimer(runs, threshold=1, delay=0.0, max_wait=1.0, min_interval=0.2)

    waves.departed()
    await asyncio.sleep(0.05)
    assert runs == [1]
    waves.departed()  # the last run was just now: this one waits out the interval
    await asyncio.sleep(0.05)
    assert runs == [1]
    await asyncio.sleep(0.25)
    assert runs == [1, 1]


async def test_the_stragglers_of_a_wave_get_one_more_reclaim_however_few():
    runs: list[int] = []
    waves = reclaimer(runs, threshold=3, delay=0.02, max_wait=1.0, min_interval=0.1)

    for _ in range(3):
        waves.departed()
    await asyncio.sleep(0.1)
    assert runs == [1]
    waves.departed()  # one straggler of that wave: under the threshold, still reclaimed
    assert not waves.settled
    await asyncio.sleep(0.2)
    assert runs == [1, 1] and waves.settled
    waves.departed()  # the straggler's run was no wave's: a lone departure after it is not owed one
    await asyncio.sleep(0.2)
    assert runs == [1, 1] and waves.settled
    waves.close()


class SlowRelease(FakeRegistry):
    """A registry whose ``release_client`` answers when told (``answer``), or fails."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.answer = asyncio.Event()
        self.fail = fail

    async def release_client(self, address, generation):
        await self.answer.wait()
        if self.fail:
            raise ConnectionError("registry restarting")
        return await super().release_client(address, generation)


async def test_the_write_watch_does_not_keep_a_client_that_left():
    router = make_router()
    conn, _ = await join(router, "a")
    router.clients.watch_writes(timeout=60.0, period=0.01)
    await asyncio.sleep(0.05)  # it looked at the client
    gone = weakref.ref(conn)
    await router.disconnect(conn)
    del conn
    gc.collect()
    try:
        assert gone() is None
    finally:
        router.clients.stop_watching()
        router.reclaimer.close()


async def test_the_write_watch_looks_only_while_the_worker_holds_clients():
    """No look is pending once the last client left (nothing of it outlives a wave), and the
    next client arms it again."""
    router = make_router()
    clients = router.clients
    looks: list[float] = []
    clients.evict_stalled = lambda now, timeout: looks.append(now)  # type: ignore[method-assign]
    clients.watch_writes(timeout=60.0, period=0.01)
    await asyncio.sleep(0.05)
    assert looks == []  # no client: nothing to look at

    a, _ = await join(router, "a")
    b, _ = await join(router, "b")
    await asyncio.sleep(0.1)
    assert len(looks) >= 3
    await router.disconnect(a)
    seen = len(looks)
    await asyncio.sleep(0.05)
    assert len(looks) > seen  # b is still here
    await router.disconnect(b)
    seen = len(looks)
    await asyncio.sleep(0.05)
    assert len(looks) == seen  # the last one left: the timer was cancelled with it

    c, _ = await join(router, "c")
    await asyncio.sleep(0.05)
    assert len(looks) > seen
    clients.stop_watching()
    seen = len(looks)
    await asyncio.sleep(0.05)
    assert len(looks) == seen
    await router.disconnect(c)
    router.reclaimer.close()


async def test_the_write_watch_evicts_a_client_whose_write_stalled():
    router = make_router(enable_message_batching=False)
    a, a_socket = await join(router, "a")
    b, b_socket = await join(router, "b")
    b_socket.block = asyncio.Event()  # b reads nothing: its write blocks
    router.clients.watch_writes(timeout=0.05, period=0.01)
    router.route(a, call("b"))
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if b_socket.close_code is not None:
                break
        assert b_socket.close_code == CloseCode.SLOW_CONSUMER
        assert router.counters.evicted == 1
        assert a_socket.close_code is None
    finally:
        router.clients.stop_watching()
        router.reclaimer.close()


@pytest.mark.parametrize("release_fails", [False, True])
async def test_a_departure_counts_for_the_reclaim_once_the_router_let_go_of_the_connection(release_fails):
    registry = SlowRelease(fail=release_fails)
    router = make_router(registry)
    conn, _ = await join(router, "a")

    leaving = asyncio.ensure_future(router.disconnect(conn))
    await settle()
    # The disconnect still holds the connection while the registry answers: a reclaim now
    # would run before its memory is freed.
    assert router.reclaimer.departed_since == 0

    registry.answer.set()
    await leaving
    assert router.reclaimer.departed_since == 1
    router.reclaimer.close()


def _traced_at(snapshot: tracemalloc.Snapshot, filename: str, lineno: int | None = None) -> int:
    return sum(
        stat.count
        for stat in snapshot.statistics("lineno")
        if stat.traceback[0].filename == filename and (lineno is None or stat.traceback[0].lineno == lineno)
    )


async def test_the_future_iterators_a_wave_left_in_asyncios_free_list_are_freed_and_the_list_left_empty():
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    free_lists = memory.FreeLists()
    free_lists.warm(loop)  # the reserve, set aside at start
    tracemalloc.start()
    try:
        wave = [future.__await__() for _ in range(2 * memory.FUTURE_ITERS)]
        line = inspect.currentframe().f_lineno - 1  # type: ignore[union-attr]
        del wave  # the free list keeps the last of them
        assert _traced_at(tracemalloc.take_snapshot(), __file__, line) >= memory.FUTURE_ITERS - 1
        free_lists.swap(loop, [])
        assert _traced_at(tracemalloc.take_snapshot(), __file__, line) == 0
        probe = [future.__await__() for _ in range(10)]
        probe_line = inspect.currentframe().f_lineno - 1  # type: ignore[union-attr]
        # Allocated anew (traced here), not taken from the free list: the swap left it empty.
        assert _traced_at(tracemalloc.take_snapshot(), __file__, probe_line) >= len(probe)
    finally:
        tracemalloc.stop()
        future.cancel()


def _wave_of_timer_handles(loop: asyncio.AbstractEventLoop) -> int:
    handles = [loop.call_later(3600.0, print) for _ in range(2 * memory.HANDLES)]
    line = inspect.currentframe().f_lineno - 1  # type: ignore[union-attr]
    for handle in handles:
        handle.cancel()
    return line


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_the_timer_handles_a_wave_left_in_uvloops_free_list_are_freed_by_a_reclaim(monkeypatch):
    import uvloop

    trims: list[int] = []
    monkeypatch.setattr(memory, "_TRIM", lambda: trims.append(1))
    monkeypatch.setattr(memory, "FREE_LISTS", memory.FreeLists())

    async def wave_then_reclaim() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        memory.FREE_LISTS.warm(loop)
        line = _wave_of_timer_handles(loop)
        await asyncio.sleep(0.05)  # the loop lets go of the cancelled handles: into the free list
        kept = _traced_at(tracemalloc.take_snapshot(), __file__, line)
        memory.reclaim()
        await asyncio.sleep(memory.SETTLE + 0.2)
        return line, kept, _traced_at(tracemalloc.take_snapshot(), __file__, line)

    loop = uvloop.new_event_loop()
    tracemalloc.start()
    try:
        line, kept, after = loop.run_until_complete(wave_then_reclaim())
    finally:
        tracemalloc.stop()
        loop.close()
    assert kept >= 200, line  # uvloop's free list kept the wave's handles
    assert after <= 2  # freed (an object or two of the line's other allocations may be reused)
    assert trims == [1]  # and the collection and the trim ran once


async def test_a_reclaim_on_asyncios_loop_collects_and_trims_once_after_the_loop_settled(monkeypatch):
    trims: list[int] = []
    monkeypatch.setattr(memory, "_TRIM", lambda: trims.append(1))
    memory.reclaim()
    assert trims == []  # not yet: the loop still holds the renewed handles
    await asyncio.sleep(memory.SETTLE + 0.2)
    assert trims == [1]


def test_a_reclaim_clears_the_struct_modules_cache(monkeypatch):
    # websockets' close code ("!H") is first packed when a wave closes: its cached Struct would
    # keep one of the wave's arenas.
    cleared: list[int] = []
    monkeypatch.setattr(memory, "_TRIM", None)
    monkeypatch.setattr(struct, "_clearcache", lambda: cleared.append(1))
    memory.collect_and_trim()
    assert cleared == [1]


def test_a_reclaim_outside_a_loop_collects_and_trims_at_once(monkeypatch):
    trims: list[int] = []
    monkeypatch.setattr(memory, "_TRIM", lambda: trims.append(1))
    memory.reclaim()
    assert trims == [1]


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_the_reserve_taken_back_after_a_wave_keeps_the_objects_it_pointed_to_from_start():
    # A reserve timer handle keeps its time (a float), a reserve iterator its future, the reserve
    # its lists: made anew when the reserve is taken back, they would sit in the pools the wave
    # left partly used.
    import uvloop

    async def warm_wave_swap() -> tuple[set[int], set[int], set[int], set[int]]:
        loop = asyncio.get_running_loop()
        free_lists = memory.FreeLists()
        free_lists.warm(loop)
        times = {id(handle.when()) for handle in free_lists.timers}
        futures = {id(gc.get_referents(it)[0]) for it in free_lists.iters}
        lists = [free_lists.iters, free_lists.soon, free_lists.timers, free_lists.floats]
        _wave_of_timer_handles(loop)
        await asyncio.sleep(0.05)
        wave = free_lists.take_handles(loop)
        await asyncio.sleep(memory.SETTLE)
        free_lists.swap(loop, wave)
        await asyncio.sleep(0.05)
        now = [free_lists.iters, free_lists.soon, free_lists.timers, free_lists.floats]
        assert all(kept is list_now for kept, list_now in zip(lists, now))
        return (
            times,
            {id(handle.when()) for handle in free_lists.timers},
            futures,
            {id(gc.get_referents(it)[0]) for it in free_lists.iters},
        )

    loop = uvloop.new_event_loop()
    try:
        times, times_after, futures, futures_after = loop.run_until_complete(warm_wave_swap())
    finally:
        loop.close()
    assert len(times) == memory.HANDLES and times_after == times
    assert len(futures) == 1 and futures_after == futures


def test_the_floats_a_wave_left_in_cpythons_free_list_are_freed_and_the_list_left_empty():
    free_lists = memory.FreeLists()
    free_lists.floats = memory.take_floats()  # the reserve, set aside at start
    free_lists.warmed = True
    loop = asyncio.new_event_loop()
    free_lists._future = loop.create_future()
    try:
        wave = [i * 1.5 for i in range(1, 2 * memory.FLOATS)]
        del wave  # the free list keeps the last of them
        free_lists.swap(loop, [])
        blocks = sys.getallocatedblocks()
        probe = [i * 2.5 for i in range(1, memory.FLOATS + 1)]
        # New blocks, not the wave's floats from the free list: the swap left it empty.
        assert sys.getallocatedblocks() - blocks >= len(probe)
    finally:
        loop.close()


_CHURN = """
import resource, sys
from rhizomorph.gateway import memory
if sys.argv[1] == "tuned":
    assert memory.tune_heap()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    blocks = [b"x" * 300_000 for _ in range(8)]  # written: each page is touched
    del blocks
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(memory._LIBC is None, reason="glibc only")
def test_a_tuned_heap_keeps_the_pages_of_freed_large_blocks_for_the_next_ones():
    def faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True)
        return int(done.stdout.strip().splitlines()[-1])

    # glibc's own thresholds follow the largest block freed: the 2.4 MB freed at the heap's top
    # goes back to the system each round and the next round's blocks fault its pages in again.
    default, tuned = faults("default"), faults("tuned")
    assert default > 100 * 8 * 300_000 // 4096 // 2
    assert tuned < default // 10
