"""How ``get_service`` modes spread callers over providers of one service name that differ in speed.

    python -m benchmarks.bench_load_spread [--providers 8] [--slow 2] [--callers 1000] [--rate 200]

``--providers`` hypha-rpc clients in one process (not the Ray driver) serve ``work()``: the
first ``--slow`` of them take ``--slow-delay`` seconds a call, the others ``--fast-delay``;
``get_load()`` answers the calls in flight. ``--callers`` hypha-rpc clients in a second process
arrive at ``--rate`` per second; each fetches the service with ``get_service(mode=…)`` and calls
``work()`` once. Printed per mode: the calls each provider served, the share of the slow ones
(their fair share is slow/providers) and the callers' median and p95 time from arrival to
answer. Router: 2 gateway workers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from benchmarks.loadgen import LoadProcess
from rhizomorph import Config, Deployment, ensure_ray

MODES = ("random", "min_load")


async def serve_providers(url: str, count: int, slow: int, slow_delay: float, fast_delay: float, ready: str) -> None:
    """Serve until a caller calls ``stop()``; writes the workspace to ``ready`` once registered."""
    from hypha_rpc import connect_to_server

    owner = await connect_to_server({"server_url": url})
    workspace, token = owner.config.workspace, await owner.generate_token()
    in_flight = [0] * count
    stopped = asyncio.Event()
    for i in range(count):
        provider = await connect_to_server(
            {"server_url": url, "workspace": workspace, "token": token, "client_id": f"spread-{i}"}
        )

        async def work(i: int = i, delay: float = slow_delay if i < slow else fast_delay) -> int:
            in_flight[i] += 1
            try:
                await asyncio.sleep(delay)
                return i
            finally:
                in_flight[i] -= 1

        await provider.register_service(
            {
                "id": "spread",
                "config": {"visibility": "public"},
                "work": work,
                "get_load": lambda i=i: in_flight[i],
                "stop": stopped.set,
            }
        )
    Path(ready).write_text(workspace)
    await stopped.wait()


async def run_callers(url: str, workspace: str, callers: int, rate: float) -> dict[str, Any]:
    from hypha_rpc import connect_to_server

    window = asyncio.Semaphore(50)

    async def connect() -> Any:
        async with window:
            return await connect_to_server({"server_url": url, "method_timeout": 120})

    servers = await asyncio.gather(*(connect() for _ in range(callers)))
    results: dict[str, Any] = {}
    for mode in MODES:

        async def one(index: int, server: Any, mode: str = mode) -> tuple[int, float]:
            await asyncio.sleep(index / rate)
            started = time.monotonic()
            svc = await server.get_service(f"{workspace}/spread", mode=mode, select_timeout=30)
            return await svc.work(), time.monotonic() - started

        answers = await asyncio.gather(*(one(i, s) for i, s in enumerate(servers)))
        latencies = sorted(t for _, t in answers)
        results[mode] = {
            "served": Counter(p for p, _ in answers),
            "p50": statistics.median(latencies),
            "p95": latencies[int(0.95 * (len(latencies) - 1))],
        }
    stop = await servers[0].get_service(f"{workspace}/spread", mode="first")
    await stop.stop()
    await asyncio.gather(*(s.disconnect() for s in servers))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=int, default=8)
    parser.add_argument("--slow", type=int, default=2)
    parser.add_argument("--slow-delay", type=float, default=2.0)
    parser.add_argument("--fast-delay", type=float, default=0.02)
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="callers arriving per second")
    args = parser.parse_args()
    ensure_ray()
    with Deployment(Config(port=0, workers=2)) as router, LoadProcess() as providers, LoadProcess() as callers:
        ready = Path(tempfile.mkdtemp()) / "workspace"
        serving = threading.Thread(
            target=providers.run,
            args=(serve_providers, router.url, args.providers, args.slow, args.slow_delay, args.fast_delay, str(ready)),
        )
        serving.start()
        while not ready.exists():
            time.sleep(0.2)
        results = callers.run(run_callers, router.url, ready.read_text(), args.callers, args.rate)
        serving.join()
    print(
        f"{args.providers} providers ({args.slow} slow: {args.slow_delay} s a call, the others "
        f"{args.fast_delay} s), {args.callers} callers at {args.rate:g}/s"
    )
    for mode, result in results.items():
        served = [result["served"][i] for i in range(args.providers)]
        share = sum(served[: args.slow]) / args.callers
        print(
            f"  {mode:>8}: calls per provider {served}; slow share {share:.1%} "
            f"(fair {args.slow / args.providers:.1%}); arrival to answer p50 {result['p50']:.2f} s, "
            f"p95 {result['p95']:.2f} s"
        )


if __name__ == "__main__":
    main()
