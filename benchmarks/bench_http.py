"""Call latency over the HTTP side of the gateway, beside the WebSocket path, in one run.

    python -m benchmarks.bench_http [--calls 300] [--workers 1]

One provider (a hypha-rpc WebSocket client) registers ``echo``; the same ``echo(256 B)`` is then
called, one call at a time, by:

- ``ws``: a hypha-rpc WebSocket client (the reference);
- ``http-transport``: a hypha-rpc client with ``transport: "http"`` (GET stream + one POST per
  message, rhizomorph/gateway/http_rpc.py);
- ``http-call``: plain ``POST /{ws}/services/echo/echo`` with httpx on a kept-alive connection
  (an in-process caller of the router, rhizomorph/gateway/http_callers.py), and ``http-call,
  first`` the first such call of a fresh credential (the caller is opened then).

Prints p50 / p99 / mean in milliseconds as a markdown table, with the machine it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import httpx
from hypha_rpc import connect_to_server

from benchmarks.machine import machine_info
from rhizomorph import Config, Deployment, ensure_ray

PAYLOAD = "x" * 256


async def _timed(call: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    for _ in range(min(20, count)):  # warm-up
        await call()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _row(name: str, times: list[float]) -> str:
    times = sorted(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return f"| {name} | {len(times)} | {times[len(times) // 2]:.2f} | {p99:.2f} | {statistics.fmean(times):.2f} |"


async def run(url: str, calls: int) -> list[str]:
    base = url.replace("ws://", "http://")
    provider = await connect_to_server({"server_url": url})
    await provider.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
    workspace = provider.config.workspace
    token = await provider.generate_token()
    rows = []
    ws = await connect_to_server({"server_url": url})
    echo = await ws.get_service(f"{workspace}/echo")
    rows.append(_row("ws (hypha-rpc)", await _timed(lambda: echo.echo(PAYLOAD), calls)))
    http = await connect_to_server({"server_url": base, "transport": "http", "token": token, "workspace": workspace})
    echo_http = await http.get_service("echo")
    rows.append(_row("http-transport (hypha-rpc)", await _timed(lambda: echo_http.echo(PAYLOAD), calls)))
    async with httpx.AsyncClient() as client:
        call_url = f"{base}/{workspace}/services/echo/echo"

        async def post() -> None:
            answer = await client.post(call_url, json={"x": PAYLOAD})
            assert answer.status_code == 200, answer.text

        rows.append(_row("http-call (httpx, anonymous)", await _timed(post, calls)))
        first: list[float] = []
        for _ in range(min(calls, 30)):
            fresh = await provider.generate_token()  # a new credential: a new caller
            started = time.perf_counter()
            answer = await client.post(call_url, json={"x": PAYLOAD}, headers={"Authorization": f"Bearer {fresh}"})
            first.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.text
        rows.append(_row("http-call, first of a new token", first))
    for server in (http, ws, provider):
        await server.disconnect()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    ensure_ray(num_cpus=2)
    deployment = Deployment(Config(port=0, workers=args.workers, log_level="WARNING")).start()
    try:
        rows = asyncio.run(run(deployment.url, args.calls))
    finally:
        deployment.stop()
    machine = machine_info()
    cores, load = machine["logical_cores"], machine["load_average_at_start"]
    print(f"{args.workers} worker(s); {machine['cpu_model']}, {cores} cores, load {load}\n")
    print("| path | calls | p50 ms | p99 ms | mean ms |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
