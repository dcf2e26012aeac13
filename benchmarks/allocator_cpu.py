"""CPU per routed message under Python's allocator (pymalloc) and under ``PYTHONMALLOC=malloc``
(``Config.worker_allocator``), in the router's own code.

    python benchmarks/allocator_cpu.py [--pairs 6] [--messages 100000]

Each run is a fresh interpreter (the allocator is chosen as it starts) routing ``--messages``
v3 calls between two clients of one ``Router`` (the fake sockets and registry of
tests/unit/test_router.py: no Ray, no network, so only the router's code and the allocator are
measured); CPU time of the process per message. The two allocators alternate (A B A B ...) so
that load from other work on the machine falls on both; prints each run, the median and the
minimum of each, and the load average. Run it under ``nice -n -10`` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOCATORS = ("pymalloc", "malloc")


async def route(messages: int) -> float:
    """Seconds of this process's CPU per message routed from one client to another."""
    from tests.unit.test_router import call, join, make_router, settle

    router = make_router()
    caller, _ = await join(router, "a")
    _, receiver = await join(router, "b")
    frames = [call("b", session=f"s{i}") for i in range(200)]
    for i in range(2000):  # warm-up
        router.route(caller, frames[i % 200])
    await settle(50)
    receiver.sent.clear()
    started = time.process_time()
    for i in range(messages):
        router.route(caller, frames[i % 200])
        if i % 100 == 99:  # let the delivery queue write, as the event loop would
            await asyncio.sleep(0)
            receiver.sent.clear()
    await settle(50)
    return (time.process_time() - started) / messages


def run_child(allocator: str, messages: int) -> float:
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("PYTHONMALLOC", None)
    if allocator == "malloc":
        env["PYTHONMALLOC"] = "malloc"
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--messages", str(messages)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=6, help="runs of each allocator, alternating")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, REPO)
        print(asyncio.run(route(args.messages)))
        return 0
    results: dict[str, list[float]] = {a: [] for a in ALLOCATORS}
    for _ in range(args.pairs):
        for allocator in ALLOCATORS:
            seconds = run_child(allocator, args.messages)
            results[allocator].append(seconds)
            print(f"  {allocator:8s} {seconds * 1e6:.2f} µs/msg", flush=True)
    for allocator, values in results.items():
        median, best = statistics.median(values) * 1e6, min(values) * 1e6
        print(f"{allocator:8s} median {median:.2f} µs/msg, min {best:.2f} ({len(values)} runs)")
    base = statistics.median(results["pymalloc"])
    print(
        f"malloc / pymalloc: median {statistics.median(results['malloc']) / base:.2f}, "
        f"min {min(results['malloc']) / min(results['pymalloc']):.2f}; load average {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
