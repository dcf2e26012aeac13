"""CPU per echo call of caller, provider and router, batching on vs off, in runs long enough to measure it.

    nice -n -10 python -m benchmarks.call_cpu [--case small|medium|mixed] [--rounds N] [--pairs 3]
                                              [--in-flight 32] [--client v4 hypha-rpc] [--trees DIR ...]

``bench_claims`` runs one pass of a case (250 mixed messages, ~0.2 s): its CPU figures are a
few clock ticks each. Here each run is ``rounds`` passes over the case's messages (those of
``bench_claims``: 2000 x 256 B, 500 x 20 KB, the 250 dashboard messages; by default enough
passes for ~3000 calls), alternating between a router with default batching and one with
``--no-batching`` (a ``rhizomorph serve`` each, with an embedded Ray of its own); a provider
process (``benchmarks/echo_provider.py``) and the caller sit on different gateway workers, and
the v4 client batches as its router does. One JSON line per run: calls/s, and CPU µs per call of
the caller, the provider and the router's whole process tree (Ray's processes included).

``--trees`` compares the client code of several source trees (e.g. a worktree of the base
commit and the branch): each run is repeated with the caller and the provider of each tree
(its own ``python -m benchmarks.call_cpu`` with ``PYTHONPATH`` set to it), interleaved, on the
same two routers (this tree's). Numbers: ``benchmarks/mixed.md``, ``benchmarks/v4cost.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from benchmarks.clients import HyphaRpcClients, V4Clients, split_echo_rig
from benchmarks.contenders import _free_port
from benchmarks.run import quiet_client_logs
from benchmarks.scenarios import CLAIM_SUITES, CONCURRENT

START_TIMEOUT = 120.0
CALLS_PER_RUN = 3000  #: default calls per run: ``rounds`` is rounded up to reach it
CASES = {case.scenario.name: case.scenario for case in CLAIM_SUITES["full"].cases() if case.mode == CONCURRENT}


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

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_router(batching: bool, attempts: int = 3) -> ServedRouter:
    """A router serving, started once the one before it is up: two Ray clusters starting at once
    on a loaded 2-core machine can miss Ray's fixed 30 s wait for its raylet. A router that
    failed to start is tried again."""
    for attempt in range(attempts):
        router = ServedRouter(batching)
        try:
            router.wait_ready()
            return router
        except (RuntimeError, TimeoutError):
            router.stop()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (those alive now)."""
    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass  # a process that ended during the run: its time is lost, as in the probes
    return total


def default_rounds(case: str) -> int:
    return math.ceil(CALLS_PER_RUN / CASES[case].messages)


async def measure(
    url: str,
    router_pid: int,
    batching: bool,
    case: str,
    client: str,
    rounds: int,
    in_flight: int,
    workers_cpu: Callable[[], float] | None = None,
    roles_cpu: Callable[[], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """One run; ``workers_cpu`` (CPU seconds of some of the router's processes) is read at the
    start and the end of the timed window too, as ``workers_us`` per call; ``roles_cpu`` (CPU
    seconds by process role) likewise, as ``roles_us``."""
    kind = V4Clients(batching=batching) if client == "v4" else HyphaRpcClients()
    payloads = CASES[case].payloads()
    rig = await split_echo_rig(kind, url, payloads, apart=True)
    try:
        await rig.service.echo(payloads[0])  # the first call opens the session: outside the timing
        gate = asyncio.Semaphore(in_flight)

        async def call(payload: Any) -> None:
            async with gate:
                await rig.service.echo(payload)

        caller0, provider0, router0 = time.process_time(), rig.provider.cpu_seconds(), tree_cpu_seconds(router_pid)
        workers0 = workers_cpu() if workers_cpu is not None else 0.0
        roles0 = roles_cpu() if roles_cpu is not None else {}
        started = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(call(payload) for payload in payloads))
        wall = time.perf_counter() - started
        workers = workers_cpu() - workers0 if workers_cpu is not None else None
        roles = roles_cpu() if roles_cpu is not None else {}
        calls = rounds * len(payloads)
        per_call = 1e6 / calls
        by_role = {name: round((seconds - roles0.get(name, 0.0)) * per_call, 1) for name, seconds in roles.items()}
        return {
            "case": case,
            "client": client,
            "batching": batching,
            "in_flight": in_flight,
            "calls": calls,
            "calls_per_s": round(calls / wall),
            "caller_us": round((time.process_time() - caller0) * per_call),
            "provider_us": round((rig.provider.cpu_seconds() - provider0) * per_call),
            "router_us": round((tree_cpu_seconds(router_pid) - router0) * per_call),
            **({"workers_us": round(workers * per_call)} if workers is not None else {}),
            **({"roles_us": by_role, "wall_s": round(wall, 2)} if roles_cpu is not None else {}),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        await rig.close()


def run_in_tree(tree: str, router: ServedRouter, client: str, args: argparse.Namespace, rounds: int) -> dict[str, Any]:
    """One run with the client code of ``tree``: its ``call_cpu one`` in a process of its own."""
    command = [sys.executable, "-m", "benchmarks.call_cpu", "one", "--url", router.url]
    command += ["--router-pid", str(router.process.pid), "--case", args.case, "--client", client]
    command += ["--rounds", str(rounds), "--in-flight", str(args.in_flight)]
    command += [] if router.batching else ["--no-batching"]
    env = {**os.environ, "PYTHONPATH": tree}
    done = subprocess.run(command, cwd=tree, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return {"tree": tree, **json.loads(done.stdout.strip().splitlines()[-1])}


CLIENTS = ("v4", "hypha-rpc")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", choices=sorted(CASES), default="mixed", help="bench_claims's messages")
    parser.add_argument("--rounds", type=int, default=0, help=f"passes per run (default: ~{CALLS_PER_RUN} calls)")
    parser.add_argument("--in-flight", type=int, default=32, help="calls in flight (250: a burst per pass of mixed)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_client_logs()
    if argv[:1] == ["one"]:  # one run against a router already serving (``--trees``)
        parser = argparse.ArgumentParser(description="one run of call_cpu")
        _common(parser)
        parser.add_argument("--client", choices=CLIENTS, default="v4")
        parser.add_argument("--url", required=True)
        parser.add_argument("--router-pid", type=int, required=True)
        parser.add_argument("--no-batching", dest="batching", action="store_false")
        args = parser.parse_args(argv[1:])
        rounds = args.rounds or default_rounds(args.case)
        run = measure(args.url, args.router_pid, args.batching, args.case, args.client, rounds, args.in_flight)
        print(json.dumps(asyncio.run(run)), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common(parser)
    parser.add_argument("--client", nargs="+", choices=CLIENTS, default=["v4"], help="one run of each, in turn")
    parser.add_argument("--pairs", type=int, default=3, help="runs per router, alternated (on, off, on, off ...)")
    parser.add_argument("--trees", nargs="+", default=[], help="source trees whose client code to compare")
    args = parser.parse_args(argv)
    rounds = args.rounds or default_rounds(args.case)
    routers: list[ServedRouter] = []
    try:
        for batching in (True, False):
            routers.append(start_router(batching))
        for _ in range(args.pairs):
            for router in routers:
                for client in args.client:
                    for tree in args.trees:
                        print(json.dumps(run_in_tree(os.path.abspath(tree), router, client, args, rounds)), flush=True)
                    if not args.trees:
                        run = measure(
                            router.url, router.process.pid, router.batching, args.case, client, rounds, args.in_flight
                        )
                        print(json.dumps(asyncio.run(run)), flush=True)
    finally:
        for router in routers:
            router.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
