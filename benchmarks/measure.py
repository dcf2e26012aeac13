"""Time one run of a case on a rig, and turn it into one result record.

Counting rules (also in benchmarks/README.md):
- calls: ``messages`` is the number of calls, ``delivered`` the calls whose echo came back
  intact; bytes count the payload both ways (request and echo); latency is the round trip.
- events: ``messages`` is events published x receivers, ``delivered`` the events received;
  bytes count the payload of each delivery; latency is one way (send to receive, same clock).
- ``elapsed_s`` runs from the first send to the last reply/delivery.
- Server CPU is user+system seconds of the server's processes over the run; RSS is the
  peak of their summed resident memory, sampled every 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from benchmarks.clients import EchoRig, EventRig
from benchmarks.contenders import ProcessProbe
from benchmarks.scenarios import Case, payload_size

RSS_SAMPLE_INTERVAL = 0.1


@dataclass
class Result:
    case: str
    scenario: str
    mode: str
    messages: int
    delivered: int
    errors: int
    payload_bytes: int
    elapsed_s: float
    msgs_per_s: float
    mb_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    server_cpu_s: float
    server_rss_mb: float
    client_cpu_s: float
    timed_out: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class _Usage:
    server_cpu_s: float = 0.0
    server_rss_mb: float = 0.0
    client_cpu_s: float = 0.0


@contextlib.asynccontextmanager
async def _usage(probe: ProcessProbe) -> AsyncIterator[_Usage]:
    """Server CPU seconds and peak RSS, and this (client) process's CPU seconds, over the block."""
    usage, me = _Usage(), psutil.Process()
    peak = probe.rss_bytes()

    async def sample() -> None:
        nonlocal peak
        while True:
            await asyncio.sleep(RSS_SAMPLE_INTERVAL)
            peak = max(peak, probe.rss_bytes())

    cpu0, client0 = probe.cpu_seconds(), sum(me.cpu_times()[:2])
    sampler = asyncio.ensure_future(sample())
    try:
        yield usage
    finally:
        sampler.cancel()
        usage.server_cpu_s = probe.cpu_seconds() - cpu0
        usage.client_cpu_s = sum(me.cpu_times()[:2]) - client0
        usage.server_rss_mb = max(peak, probe.rss_bytes()) / 2**20


async def run_calls(rig: EchoRig, case: Case, payloads: list[Any], probe: ProcessProbe, timeout: float) -> Result:
    """``len(payloads)`` echo calls spread over the rig's callers, ``case.concurrency`` in flight each."""
    sizes = [payload_size(p) for p in payloads]
    latencies: list[float] = []
    stats = {"ok": 0, "errors": 0, "bytes": 0}
    next_index = iter(range(len(payloads)))
    last = 0.0

    async def worker(caller: int) -> None:
        nonlocal last
        for index in next_index:
            started = time.perf_counter()
            try:
                intact = await rig.call(caller, index)
            except Exception:
                intact = False
            last = time.perf_counter()
            if intact:
                latencies.append(last - started)
                stats["ok"] += 1
                stats["bytes"] += 2 * sizes[index]
            else:
                stats["errors"] += 1

    async with _usage(probe) as usage:
        first = time.perf_counter()
        tasks = [asyncio.ensure_future(worker(c)) for c in range(rig.callers) for _ in range(case.concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return _result(
        case,
        len(payloads),
        stats["ok"],
        stats["errors"],
        stats["bytes"],
        max(last - first, 1e-9),
        latencies,
        usage,
        timed_out=bool(pending),
    )


async def run_events(rig: EventRig, case: Case, payloads: list[Any], probe: ProcessProbe, timeout: float) -> Result:
    """Publish every payload once, as fast as the socket takes them; wait for all deliveries."""
    sink = rig.sink
    expected = len(payloads) * rig.receivers
    sink.reset(expected)
    errors = 0
    async with _usage(probe) as usage:
        first = time.perf_counter()
        deadline = first + timeout
        for index in range(len(payloads)):
            if time.perf_counter() > deadline:
                break
            try:
                await asyncio.wait_for(rig.publish(index), max(deadline - time.perf_counter(), 0.001))
            except Exception:
                errors += 1
        try:
            await asyncio.wait_for(sink.done.wait(), max(deadline - time.perf_counter(), 0.001))
            timed_out = False
        except TimeoutError:
            timed_out = True
    elapsed = max((sink.last_arrival or time.perf_counter()) - first, 1e-9)
    return _result(
        case, expected, sink.delivered, errors, sink.bytes, elapsed, list(sink.latencies), usage, timed_out=timed_out
    )


def _result(
    case: Case,
    messages: int,
    delivered: int,
    errors: int,
    nbytes: int,
    elapsed: float,
    latencies: list[float],
    usage: _Usage,
    *,
    timed_out: bool,
) -> Result:
    return Result(
        case=case.id,
        scenario=case.scenario.name,
        mode=case.mode,
        messages=messages,
        delivered=delivered,
        errors=errors,
        payload_bytes=nbytes,
        elapsed_s=elapsed,
        msgs_per_s=delivered / elapsed,
        mb_per_s=nbytes / elapsed / 1e6,
        latency_p50_ms=percentile(latencies, 0.50) * 1e3,
        latency_p99_ms=percentile(latencies, 0.99) * 1e3,
        server_cpu_s=usage.server_cpu_s,
        server_rss_mb=usage.server_rss_mb,
        client_cpu_s=usage.client_cpu_s,
        timed_out=timed_out,
    )
