"""A flood of calls to targets that never existed, on a one-worker router, next to real traffic.

One client (a separate process, so the flood does not share the test's event loop) sends calls
to ~50k distinct unknown targets as fast as its socket takes them, and reads its answers. Two
released hypha-rpc clients meanwhile make echo round trips through the same worker. Checked:
every flood call is answered (a reject: nothing is lost), the registry is asked a bounded number
of times (``rhizomorph/protocol/lookups.py``), the other clients' round trips stay under 100 ms
at p99, and the worker's RSS (psutil, on ``stats()["pid"]``) grows by at most 40 MiB and comes
back after the flooder leaves.

The p99 is of the round trips less the time their two event loops (the worker's, the test's)
waited for a core (``tests/scheduling.py``): under load (other Ray sessions, a busy loop) every
thread waits and round trips of hundreds of ms say nothing of the router. A worker busy with
the flood, or stalled, still shows in full; the second test proves it by stopping the worker
(SIGSTOP) for a moment, again and again.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import threading
import time
from typing import Any

import psutil
import pytest

from rhizomorph import Config, Deployment
from rhizomorph.protocol import envelope
from tests.scheduling import Waits, busiest, cpu_times

FLOOD_TARGETS = 50_000
MAX_GROWTH = 40 * 2**20
P99_LIMIT = 0.100
#: The deliberate stall of the second test: the worker stopped this long, this often.
STALL_S, STALL_EVERY_S = 0.15, 0.4
#: How far above its baseline the worker's RSS may stay once the flooder left (item 4 of
#: issue 14: within 20 %).
SETTLED_WITHIN = 0.20


def flood(url: str, count: int, pipe: Any) -> None:
    """The flooder (a child process): ``count`` calls to distinct unknown targets, as fast as
    the socket takes them; counts the answers until all came or the router closed it."""
    from benchmarks.soak import LeanClient

    async def run() -> dict[str, Any]:
        answers = {"reject": 0, "other": 0, "budget": 0}
        done = asyncio.get_running_loop().create_future()

        def on_binary(frame: bytes) -> None:
            message = envelope.decode(bytes(frame))
            if str(message.get("method", "")).endswith(".reject"):
                answers["reject"] += 1
                if "budget of lookups" in message["args"][0]["_rvalue"]:
                    answers["budget"] += 1
            else:
                answers["other"] += 1
            if answers["reject"] + answers["other"] >= count and not done.done():
                done.set_result(None)

        client = await LeanClient.connect(url, on_binary)
        workspace = client.address.split("/", 1)[0]
        pipe.send({"connected": client.address})
        started = time.monotonic()
        for i in range(count):
            header = {"type": "method", "to": f"{workspace}/never-{i}", "method": "services.x.f", "session": f"f{i}"}
            client.send(envelope.encode(header, {"args": [i]}))
            if i % 500 == 499:
                await asyncio.sleep(0)  # let the answers in; the socket paces the rest
        sent_s = time.monotonic() - started
        await asyncio.wait([done, client.lost], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        result = {
            "sent": count,
            "sent_s": sent_s,
            "answered_s": time.monotonic() - started,
            "closed": client.closed,
            "close_code": client.protocol.close_code,
            **answers,
        }
        client.close()
        await asyncio.wait([client.lost], timeout=10)
        return result

    pipe.send(asyncio.run(run()))


class RssSampler:
    """The worker's RSS, sampled every 50 ms in a thread while the flood runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


def settled_rss(process: psutil.Process, seconds: float = 3.0) -> int:
    """RSS once it stops moving: the lowest of samples 0.25 s apart over ``seconds``."""
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(process.memory_info().rss)
        time.sleep(0.25)
    return min(samples)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def loop_waits(worker_pid: int, warm_before: dict[int, float]) -> Waits:
    """The run-queue waits of the two loops an echo round trip runs on: the worker's (its
    busiest thread since ``warm_before``, a reading taken before the warm-up calls) and this
    test's (the provider and the consumer share it)."""
    worker_loop = busiest(warm_before, cpu_times(worker_pid))
    return Waits((worker_pid, worker_loop), (os.getpid(), threading.get_native_id()))


def judged_p99(round_trips: list[tuple[float, float]]) -> tuple[float, str]:
    """The p99 of the round trips less their loops' waits for a core, and a line that says how
    it was reached. ``round_trips``: (seconds, of which its loops waited)."""
    every = [seconds for seconds, _ in round_trips]
    judged = [max(0.0, seconds - waited) for seconds, waited in round_trips]
    p99 = percentile(judged, 0.99)
    line = (
        f"echo round trips {len(every)} (load average {os.getloadavg()[0]:.1f}): p50 "
        f"{percentile(every, 0.5) * 1000:.1f} ms, p99 {percentile(every, 0.99) * 1000:.1f} ms, max "
        f"{max(every) * 1000:.1f} ms; less the loops' waits for a core: p50 {percentile(judged, 0.5) * 1000:.1f} "
        f"ms, p99 {p99 * 1000:.1f} ms, max {max(judged) * 1000:.1f} ms"
    )
    return p99, line


@pytest.fixture(scope="module")
def flood_router(ray_runtime):
    deployment = Deployment(Config(port=0, workers=1, log_level="WARNING")).start()
    yield deployment
    deployment.stop()


@pytest.mark.slow
async def test_a_flood_of_calls_to_unknown_targets_is_refused_without_growing_or_stalling_the_worker(flood_router):
    from hypha_rpc import connect_to_server

    url = flood_router.url
    [stats] = await asyncio.to_thread(flood_router.stats)
    worker = psutil.Process(stats["pid"])
    provider = await connect_to_server({"server_url": url, "method_timeout": 20})
    consumer = await connect_to_server({"server_url": url, "method_timeout": 20})
    await provider.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
    echo = await consumer.get_service(f"{provider.config.workspace}/{provider.config.client_id}:echo")
    warm_before = cpu_times(worker.pid)
    for i in range(50):  # warm: the first calls pay for imports and caches
        await echo.echo(i)
    waits = loop_waits(worker.pid, warm_before)
    baseline = await asyncio.to_thread(settled_rss, worker)
    lookups_before = stats["registry_lookups"]

    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    flooder = ctx.Process(target=flood, args=(url, FLOOD_TARGETS, child_end), daemon=True)
    round_trips: list[tuple[float, float]] = []
    try:
        with RssSampler(worker.pid) as sampler:
            flooder.start()
            assert await asyncio.to_thread(parent_end.poll, 60), "the flooder did not connect"
            parent_end.recv()
            while flooder.is_alive() and not parent_end.poll():
                waited, started = waits(), time.perf_counter()
                assert await echo.echo("ping") == "ping"
                round_trips.append((time.perf_counter() - started, waits() - waited))
                await asyncio.sleep(0.005)
            assert await asyncio.to_thread(parent_end.poll, 150), "the flooder did not finish"
            result = parent_end.recv()
        flooder.join(20)
        peak = sampler.peak
        after = await asyncio.to_thread(settled_rss, worker, 5.0)
        [stats] = await asyncio.to_thread(flood_router.stats)
    finally:
        if flooder.is_alive():
            flooder.kill()
        await provider.disconnect()
        await consumer.disconnect()

    assert len(round_trips) >= 20
    p99, latency = judged_p99(round_trips)
    lookups = stats["registry_lookups"] - lookups_before
    print(
        f"\nflood: {result['sent']} calls sent in {result['sent_s']:.2f} s, all answered in "
        f"{result['answered_s']:.2f} s ({result['reject']} rejects, {result['budget']} over the lookup "
        f"budget); registry lookups {lookups}; {latency}; "
        f"worker RSS {baseline / 2**20:.1f} MiB -> peak {peak / 2**20:.1f} MiB -> after {after / 2**20:.1f} MiB"
    )
    assert not result["closed"] and result["reject"] == FLOOD_TARGETS and result["other"] == 0
    config = flood_router.config  # the lookup budget: its burst, and its rate over the flood's time
    assert lookups <= config.unknown_target_lookup_burst + config.unknown_target_lookup_rate * (
        result["answered_s"] + 1
    )
    assert p99 < P99_LIMIT, latency
    assert peak - baseline <= MAX_GROWTH
    assert after <= baseline * (1 + SETTLED_WITHIN)


@pytest.mark.slow
async def test_the_p99_check_sees_a_worker_that_stalls(flood_router):
    """The check of the flood test, on a worker stopped for ``STALL_S`` every ``STALL_EVERY_S``:
    a stopped thread waits for no core, so its stall stays in the round trips and the p99 fails
    the limit."""
    from hypha_rpc import connect_to_server

    url = flood_router.url
    [stats] = await asyncio.to_thread(flood_router.stats)
    provider = await connect_to_server({"server_url": url, "method_timeout": 20})
    consumer = await connect_to_server({"server_url": url, "method_timeout": 20})
    await provider.register_service({"id": "echo2", "config": {"visibility": "public"}, "echo": lambda x: x})
    echo = await consumer.get_service(f"{provider.config.workspace}/{provider.config.client_id}:echo2")
    warm_before = cpu_times(stats["pid"])
    for i in range(50):
        await echo.echo(i)
    waits = loop_waits(stats["pid"], warm_before)
    stop = threading.Event()

    def stall() -> None:
        while not stop.wait(STALL_EVERY_S - STALL_S):
            os.kill(stats["pid"], signal.SIGSTOP)
            time.sleep(STALL_S)
            os.kill(stats["pid"], signal.SIGCONT)

    stalling = threading.Thread(target=stall, daemon=True)
    round_trips: list[tuple[float, float]] = []
    try:
        stalling.start()
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            waited, started = waits(), time.perf_counter()
            assert await echo.echo("ping") == "ping"
            round_trips.append((time.perf_counter() - started, waits() - waited))
            await asyncio.sleep(0.005)
        stop.set()
        stalling.join(5)
    finally:
        stop.set()
        os.kill(stats["pid"], signal.SIGCONT)
        await provider.disconnect()
        await consumer.disconnect()
    p99, latency = judged_p99(round_trips)
    print(f"\nstalled worker: {latency}")
    assert p99 >= P99_LIMIT, latency
