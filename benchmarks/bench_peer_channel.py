"""How messages cross between two gateway workers of one node: Unix socket vs Ray calls.

    python -m benchmarks.bench_peer_channel [--calls 300] [--events 5000] [--repeats 3]

Two routers with 2 workers each, ``peer_channel="socket"`` and ``peer_channel="ray"``, measured
alternately in one run. A hypha-rpc caller and provider are placed on different workers, so
every message crosses the hop. Prints sequential round-trip p50 and events/s, medians of the
repeats, and the socket/ray ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from hypha_rpc import connect_to_server

from benchmarks.clients import connect_apart, event_burst
from rhizomorph import Config, Deployment, ensure_ray


async def measure(url: str, calls: int, events: int) -> tuple[float, float]:
    """(p50 round trip in ms of sequential calls, events/s of a burst) across the worker hop."""

    def connect() -> Any:
        return connect_to_server({"server_url": url})

    caller = await connect()
    provider = await connect_apart(connect, lambda s: s.config.rhizomorph_worker, caller, lambda s: s.disconnect())
    if provider.config.rhizomorph_worker == caller.config.rhizomorph_worker:
        raise RuntimeError("could not place two clients on different workers")
    address = f"{provider.config.workspace}/{provider.config.client_id}"
    await provider.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
    echo = await caller.get_service(f"{address}:echo")
    latencies = []
    for i in range(calls):
        started = time.perf_counter()
        await echo.echo(i)
        latencies.append((time.perf_counter() - started) * 1000)
    rate = await event_burst(caller, provider, events, b"x" * 256)
    await caller.disconnect()
    await provider.disconnect()
    return statistics.median(latencies), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ensure_ray()
    channels = ("socket", "ray")
    deployments = {c: Deployment(Config(port=0, workers=2, peer_channel=c)).start() for c in channels}
    results: dict[str, list[tuple[float, float]]] = {c: [] for c in channels}
    try:
        for _ in range(args.repeats):
            for channel in channels:
                results[channel].append(asyncio.run(measure(deployments[channel].url, args.calls, args.events)))
    finally:
        for deployment in deployments.values():
            deployment.stop()
    medians = {
        c: (statistics.median(r[0] for r in results[c]), statistics.median(r[1] for r in results[c])) for c in channels
    }
    print(f"cross-worker hop, 2 workers on one node, hypha-rpc clients, {args.repeats} repeats")
    for channel, (p50, rate) in medians.items():
        print(f"  {channel:6}: sequential call p50 {p50:6.2f} ms, events {rate:>9,.0f} msgs/s")
    print(
        f"  socket/ray: p50 {medians['socket'][0] / medians['ray'][0]:.2f}x, "
        f"events {medians['socket'][1] / medians['ray'][1]:.2f}x"
    )


if __name__ == "__main__":
    main()
