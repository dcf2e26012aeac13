"""What one gateway worker costs in memory: idle, and per connected client.

    python benchmarks/worker_memory.py [--clients 1000] [--subscribe]

Starts an embedded Ray and a router with one gateway worker, then reads the worker
process's RSS, USS (memory only this process holds) and PSS from /proc: idle, and after
``--clients`` bare WebSocket clients connected (optionally subscribed to an event).
Used for the sizing advice in docs/deploy.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def memory(pid: int) -> dict[str, float]:
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return {"rss": info.rss / 2**20, "uss": info.uss / 2**20, "pss": info.pss / 2**20}


async def connect_clients(url: str, count: int, subscribe: bool) -> list:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_fanout_cluster import Peer

    gate = asyncio.Semaphore(50)

    async def one() -> Peer:
        async with gate:
            peer = await Peer.connect(url)
            if subscribe:
                await peer.call_manager("subscribe", "memory")
            return peer

    return await asyncio.gather(*(one() for _ in range(count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--subscribe", action="store_true")
    args = parser.parse_args()

    import ray

    from rhizomorph import Config, Deployment, ensure_ray

    started = ensure_ray(num_cpus=1)
    try:
        with Deployment(Config(port=0, workers=1, health_check_interval=0, log_level="WARNING")) as deployment:
            pid = next(iter(deployment.worker_info.values()))["pid"]
            time.sleep(2)
            idle = memory(pid)

            async def run() -> dict[str, float]:
                peers = await connect_clients(deployment.url, args.clients, args.subscribe)
                await asyncio.sleep(2)
                loaded = memory(pid)
                await asyncio.gather(*(p.close() for p in peers))
                return loaded

            loaded = asyncio.run(run())
    finally:
        if started:
            ray.shutdown()
    print(f"gateway worker, idle: RSS {idle['rss']:.0f} MB, USS {idle['uss']:.0f} MB, PSS {idle['pss']:.0f} MB")
    print(
        f"with {args.clients} clients{' (subscribed)' if args.subscribe else ''}: RSS {loaded['rss']:.0f} MB, "
        f"USS {loaded['uss']:.0f} MB; "
        f"{(loaded['uss'] - idle['uss']) * 1024 / max(args.clients, 1):.1f} KB per client (USS)"
    )


if __name__ == "__main__":
    main()
