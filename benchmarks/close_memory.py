"""Where a worker's memory goes when thousands of connections close: the router's code in this
process, next to a bare websockets server.

    python benchmarks/close_memory.py [--connections 5000] [--waves 2] [--bare] [--census N]

Runs the worker's code (``Router`` behind ``rhizomorph.gateway.server.serve``, with a fake
registry: no Ray call per connection) or, with ``--bare``, a plain ``websockets`` server that
answers the auth frame and holds the socket, in this process. Client processes open
``--connections`` idle connections and close them, ``--waves`` times. After each wave: RSS,
and Python's small-object allocator (``sys._debugmallocstats``: arenas held, and how much of
them is free pools; with ``--census``, which live blocks hold its mostly free arenas:
benchmarks/arena_census.py); after the last, RSS after a full ``gc.collect()`` and a
``malloc_trim``.
Bounded: every phase has a timeout; loopback only; stops the client processes it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import re
from typing import Any

try:
    from benchmarks.arena_census import census, format_census, mallocstats_text
    from benchmarks.idle_memory import Holders
    from benchmarks.soak import raise_nofile
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    from arena_census import census, format_census, mallocstats_text  # type: ignore[no-redef]
    from idle_memory import Holders  # type: ignore[no-redef]
    from soak import raise_nofile  # type: ignore[no-redef]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def arenas() -> tuple[int, float]:
    """(arenas held, MiB in free pools) of Python's small-object allocator."""
    text = mallocstats_text()
    held = re.search(r"# arenas allocated current\s+=\s+([\d,]+)", text)
    free = re.search(r"([\d,]+) unused pools \* (\d+) bytes", text)
    free_mb = int(free.group(1).replace(",", "")) * int(free.group(2)) / 2**20 if free else 0.0
    return (int(held.group(1).replace(",", "")) if held else -1), free_mb


class NoRegistry:
    async def claim_client(self, *args: Any) -> None:
        return None

    async def release_client(self, *args: Any) -> list[dict[str, Any]]:
        return []

    async def locate(self, address: str) -> None:
        return None


async def serve(bare: bool) -> tuple[Any, int, Any]:
    if bare:
        from websockets.asyncio.server import serve as ws_serve

        async def handler(ws: Any) -> None:
            await ws.recv()
            await ws.send(json.dumps({"type": "connection_info", "workspace": "w", "client_id": "c"}))
            with contextlib.suppress(Exception):
                async for _ in ws:
                    pass

        server = await ws_serve(handler, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1], None
    from rhizomorph import Config
    from rhizomorph.gateway import server as gateway_server
    from rhizomorph.gateway.router import Router

    config = Config(port=0, workers=1, log_level="WARNING")
    router = Router(config, "probe", NoRegistry())  # type: ignore[arg-type]
    server = await gateway_server.serve(config, router, gateway_server.reuseport_socket("127.0.0.1", 0))
    return server, server.websocket.sockets[0].getsockname()[1], router


async def main(args: argparse.Namespace) -> None:
    server, port, router = await serve(args.bare)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(1.0)
    gc.collect()
    baseline = rss_mb()
    print(f"{'bare websockets' if args.bare else 'router'}: RSS before {baseline:.1f} MiB, arenas {arenas()}")
    if args.census:
        print(format_census(census(mostly_free=2.0), "  census before"))
    for wave in range(args.waves):
        holders = Holders(f"ws://127.0.0.1:{port}", args.connections, args.procs, args.concurrency)
        try:
            opened = await loop.run_in_executor(None, holders.wait_connected, args.timeout)
            await asyncio.sleep(2.0)
            held = rss_mb()
            await loop.run_in_executor(None, holders.close)
        finally:
            holders.kill()
        await asyncio.sleep(args.settle)  # the router reclaims one second after the last departure
        held_arenas, free_mb = arenas()
        print(
            f"  wave {wave + 1}: {opened} open: RSS {held:.1f} MiB; closed, {args.settle:g} s later: "
            f"{rss_mb():.1f} MiB ({(rss_mb() / baseline - 1) * 100:.0f} % above the start), "
            f"{held_arenas} arenas, {free_mb:.1f} MiB of them free pools"
        )
        if args.census:
            print(format_census(census(referrers=args.census), f"  census after wave {wave + 1}"))
    gc.collect()
    collected = rss_mb()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(f"  then gc.collect(): {collected:.1f} MiB; malloc_trim: {rss_mb():.1f} MiB")
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--census", type=int, default=0, help="census of the arenas (benchmarks/arena_census.py); N referrers a kind"
    )
    parser.add_argument("--bare", action="store_true", help="a plain websockets server instead of the router")
    raise_nofile()
    asyncio.run(main(parser.parse_args()))
