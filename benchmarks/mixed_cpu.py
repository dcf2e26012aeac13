"""CPU per call on "mixed", batching on vs off, in runs long enough to measure it.

    nice -n -10 python -m benchmarks.mixed_cpu [--rounds 12] [--pairs 3] [--in-flight 32] [--client v4]

``bench_claims`` runs one pass of the 250 mixed messages (~0.2 s): its CPU figures are a few
clock ticks each. Here each run is ``rounds`` passes, alternating between a router with default
batching and one with ``--no-batching`` (a ``rhizomorph serve`` each, with an embedded Ray of its
own); a provider process (``benchmarks/echo_provider.py``) and the caller here sit on different
gateway workers, and the v4 client batches as its router does. One JSON line per run: calls/s,
and CPU µs per call of the caller, the provider and the router's whole process tree (Ray's
processes included). ``benchmarks/mixed.md`` has the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import psutil

from benchmarks.clients import HyphaRpcClients, V4Clients, split_echo_rig
from benchmarks.contenders import _free_port
from benchmarks.run import quiet_client_logs
from benchmarks.scenarios import mixed_messages

START_TIMEOUT = 120.0


class ServedRouter:
    """``rhizomorph serve`` in a process of its own, stopped with Ctrl-C (SIGINT) as a user would."""

    def __init__(self, batching: bool) -> None:
        self.batching = batching
        port = _free_port()
        self.url = f"ws://127.0.0.1:{port}"
        command = [sys.executable, "-m", "rhizomorph.cli", "serve", "--port", str(port), "--log-level", "WARNING"]
        self.process = subprocess.Popen(
            [*command, *([] if batching else ["--no-batching"])], stdout=subprocess.PIPE, text=True
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"rhizomorph serve exited with {self.process.wait()}")
            if "serving" in line:
                # Its later output is read and dropped, so that a full pipe never blocks it.
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                return
        raise TimeoutError("rhizomorph serve did not start")

    def cpu_seconds(self) -> float:
        total = 0.0
        root = psutil.Process(self.process.pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass  # a process that ended during the run: its time is lost, as in the probes
        return total

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def measure(router: ServedRouter, client: str, rounds: int, in_flight: int) -> dict[str, Any]:
    kind = V4Clients(batching=router.batching) if client == "v4" else HyphaRpcClients()
    payloads = mixed_messages()
    rig = await split_echo_rig(kind, router.url, payloads, apart=True)
    try:
        await rig.service.echo(payloads[0])  # the first call opens the session: outside the timing
        gate = asyncio.Semaphore(in_flight)

        async def call(payload: Any) -> None:
            async with gate:
                await rig.service.echo(payload)

        caller0, provider0, router0 = time.process_time(), rig.provider.cpu_seconds(), router.cpu_seconds()
        started = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(call(payload) for payload in payloads))
        wall = time.perf_counter() - started
        calls = rounds * len(payloads)
        per_call = 1e6 / calls
        return {
            "client": client,
            "batching": router.batching,
            "in_flight": in_flight,
            "calls": calls,
            "calls_per_s": round(calls / wall),
            "caller_us": round((time.process_time() - caller0) * per_call),
            "provider_us": round((rig.provider.cpu_seconds() - provider0) * per_call),
            "router_us": round((router.cpu_seconds() - router0) * per_call),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        await rig.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="passes over the 250 messages per run")
    parser.add_argument("--pairs", type=int, default=3, help="runs per router, alternated (on, off, on, off ...)")
    parser.add_argument("--in-flight", type=int, default=32, help="calls in flight (250: a burst per pass)")
    parser.add_argument("--client", choices=("v4", "hypha-rpc"), default="v4")
    args = parser.parse_args(argv)
    quiet_client_logs()
    routers = [ServedRouter(batching=True), ServedRouter(batching=False)]
    try:
        for router in routers:
            router.wait_ready()
        for _ in range(args.pairs):
            for router in routers:
                print(json.dumps(asyncio.run(measure(router, args.client, args.rounds, args.in_flight))), flush=True)
    finally:
        for router in routers:
            router.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
