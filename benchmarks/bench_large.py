"""Large messages, v3 vs v4, side by side in one run: sequential 2 MB echoes.

    python -m benchmarks.bench_large [--size 2000000] [--calls 20] [--repeats 3]

v3: the released hypha-rpc client (its ``message_cache`` chunking: 256 KiB calls, one round
trip each). v4: rhizomorph's client (one chunk stream per message). Prints MiB/s moved (request
and reply both count), medians of the repeats, and the ratio. The clients run in a process of
their own, not in the Ray driver (``benchmarks/loadgen.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from hypha_rpc import connect_to_server as connect_v3

from benchmarks.loadgen import LoadProcess
from rhizomorph import Config, Deployment, ensure_ray
from rhizomorph.client import connect_to_server as connect_v4


async def echo_rate(url: str, connect, size: int, calls: int) -> float:
    provider = await connect({"server_url": url})
    consumer = await connect({"server_url": url})
    await provider.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
    echo = await consumer.get_service(f"{provider.config.workspace}/{provider.config.client_id}:echo")
    payload = os.urandom(size)
    assert await echo.echo(payload) == payload  # warm up the path
    started = time.perf_counter()
    for _ in range(calls):
        assert await echo.echo(payload) == payload
    elapsed = time.perf_counter() - started
    # hypha-rpc's message_cache acknowledges the last chunks after the result is back: let those
    # finish, or disconnecting cancels them and the client logs a CancelledError.
    await asyncio.sleep(0.5)
    await provider.disconnect()
    await consumer.disconnect()
    return 2 * size * calls / elapsed / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2_000_000)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    ensure_ray()
    rates: dict[str, list[float]] = {"v3": [], "v4": []}
    with Deployment(Config(port=0, workers=args.workers)) as deployment, LoadProcess() as load:
        for _ in range(args.repeats):
            for wire, connect in (("v3", connect_v3), ("v4", connect_v4)):
                rates[wire].append(load.run(echo_rate, deployment.url, connect, args.size, args.calls))
    print(f"{args.calls} sequential echoes of {args.size:,} B, {args.workers} worker(s), {args.repeats} repeats")
    for wire, values in rates.items():
        print(f"  {wire}: {statistics.median(values):7.1f} MiB/s (min {min(values):.1f}, max {max(values):.1f})")
    print(f"  v4/v3: {statistics.median(rates['v4']) / statistics.median(rates['v3']):.1f}x")


if __name__ == "__main__":
    main()
