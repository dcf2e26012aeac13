"""The router's CPU per call for two (or more) source trees of the router, side by side.

    nice -n 5 python -m benchmarks.router_cpu --trees BASE BRANCH [--case small large] [--pairs 3]
                                              [--client hypha-rpc] [--in-flight 32]

One ``rhizomorph serve`` per tree (``PYTHONPATH`` and cwd set to it, an embedded Ray of its
own, defaults otherwise), all up at once; then, for each case, runs that take turns between
the trees (base, branch, base, branch ...) with the same clients (this tree's: caller here,
provider in a process of its own, on different gateway workers as in ``bench_claims``). Each
run is ``benchmarks.call_cpu.measure`` (~3000 calls by default) plus the CPU of the router's
gateway worker(s) alone (and their minor page faults per call): the router's whole process
tree also counts Ray's idle background for as long as the run lasts, which moves with the
machine's load; the workers' part moves with the code. One JSON line per run; numbers:
``benchmarks/router_cpu.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import psutil

from benchmarks import call_cpu
from benchmarks.contenders import _free_port
from benchmarks.router_processes import cpu_seconds, role, tree
from benchmarks.run import quiet_client_logs
from rhizomorph.reaper import _stat

#: Passes per run where ``call_cpu``'s ~3000 calls would take minutes (20 x 2 MB a pass).
ROUNDS = {"large": 5}
START_ATTEMPTS = 3


class TreeRouter(call_cpu.ServedRouter):
    """``rhizomorph serve`` run from the source tree ``tree``."""

    def __init__(self, tree: str) -> None:
        self.tree = tree
        self.batching = True
        port = _free_port()
        self.url = f"ws://127.0.0.1:{port}"
        command = [sys.executable, "-m", "rhizomorph.cli", "serve", "--port", str(port), "--log-level", "WARNING"]
        env = {**os.environ, "PYTHONPATH": tree}
        self.process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, text=True)

    def _workers(self) -> list[psutil.Process]:
        """The router's gateway worker processes (alive now)."""
        processes = psutil.Process(self.process.pid).children(recursive=True)
        return [process for process in processes if role(process) == "gateway worker actor"]

    def worker_cpu_seconds(self) -> float:
        """CPU seconds of the router's gateway worker processes (alive now)."""
        return sum(seconds for process in self._workers() if (seconds := cpu_seconds(process)) is not None)

    def worker_page_faults(self) -> int:
        """Minor page faults of the router's gateway worker processes (alive now) so far: each a
        page the kernel gave them, zeroed (``rhizomorph/gateway/memory.py``, ``tune_heap``)."""
        # minflt, field 10 of proc(5): the 8th after "pid (comm)"; None for a worker that ended
        return sum(int(fields[7]) for process in self._workers() if (fields := _stat(process.pid)) is not None)

    def roles_cpu_seconds(self) -> dict[str, float]:
        """CPU seconds of the router's processes (alive now) by role (``router_processes.ROLES``)."""
        roles: dict[str, float] = {}
        for process in tree(self.process.pid):
            if (seconds := cpu_seconds(process)) is not None:
                name = role(process)
                roles[name] = roles.get(name, 0.0) + seconds
        return roles


async def run(router: TreeRouter, case: str, client: str, rounds: int, in_flight: int) -> dict[str, Any]:
    faults = router.worker_page_faults()
    record = await call_cpu.measure(
        router.url,
        router.process.pid,
        True,
        case,
        client,
        rounds,
        in_flight,
        workers_cpu=router.worker_cpu_seconds,
        roles_cpu=router.roles_cpu_seconds,
    )
    faults = router.worker_page_faults() - faults  # the run's setup (connect, first call) included
    return {"tree": router.tree, **record, "worker_faults_per_call": round(faults / record["calls"], 1)}


def start(tree: str, attempts: int = START_ATTEMPTS) -> TreeRouter:
    """A started router of ``tree``: Ray gives its raylet 30 s to register, which a loaded
    2-core machine does not always manage; then ``serve`` exits and is started again."""
    for attempt in range(attempts):
        router = TreeRouter(tree)
        try:
            router.wait_ready()
            return router
        except RuntimeError:
            router.stop()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", required=True, help="source trees of the router (base first)")
    parser.add_argument("--case", nargs="+", choices=sorted(call_cpu.CASES), default=["small", "large"])
    parser.add_argument("--client", choices=call_cpu.CLIENTS, default="hypha-rpc")
    parser.add_argument("--pairs", type=int, default=3, help="runs per tree and case, taking turns")
    parser.add_argument("--rounds", type=int, default=0, help="passes over the case's messages per run")
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args(argv)
    quiet_client_logs()
    routers: list[TreeRouter] = []
    try:
        for tree in args.trees:  # one at a time: two Ray starts at once time out on a loaded machine
            routers.append(start(os.path.abspath(tree)))
        time.sleep(2.0)  # the workers' start-up settles
        for case in args.case:
            rounds = args.rounds or ROUNDS.get(case) or call_cpu.default_rounds(case)
            for _ in range(args.pairs):
                for router in routers:
                    print(json.dumps(asyncio.run(run(router, case, args.client, rounds, args.in_flight))), flush=True)
    finally:
        for router in routers:
            router.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
