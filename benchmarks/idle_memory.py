"""Memory per idle connection of a one-worker router, and what it is made of.

    python benchmarks/idle_memory.py [--connections 5000] [--procs 4] [--breakdown 1000]

1. Starts an embedded Ray and ``Deployment(Config(port=0, workers=1))``, then ``--procs`` client
   processes that open ``--connections`` idle v3 connections between them (WebSocket upgrade,
   JSON auth frame, ``connection_info``; nothing after that, pings answered) and hold them.
   Reads the gateway worker's and the registry actor's RSS and USS (psutil) before, 5 s after
   the last one opened, again after ``--hold`` seconds idle (keepalive pings included), 8 s
   after they closed, and once the worker let go of them all and ran its reclaim (asked with
   ``__ray_call__``), and prints bytes per connection and how far above its baseline the worker
   stays after they closed (issue 14's target: within 20 %). The issue's target is <= 50 KB per idle connection.
2. ``--breakdown N`` (0: skip): what one connection costs, by owner. Runs the worker's own code
   (``rhizomorph.gateway.router.Router`` behind ``rhizomorph.gateway.server.serve``, as
   ``GatewayWorker.start`` does, against a fresh registry actor) in this process with
   ``tracemalloc`` on, opens N idle connections from a client process, and reports the traced
   Python allocations per connection grouped by source file, by allocation site and by owner
   (the innermost frame in the router's code, else in websockets), the objects per connection
   by type (``gc``), and the deep size of one connection's parts (``ClientConnection``, its
   ``DeliveryQueue``, the websockets ``ServerConnection``). This process is the Ray driver, so
   its own RSS says nothing about a worker's; step 1 gives the RSS.

The router code is not changed. Kernel socket buffers are not in any process's RSS. Bounded:
every phase has a timeout; loopback only; stops every process it started (client processes,
the router, the embedded Ray).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

try:
    from benchmarks.contenders import actor_pid
    from benchmarks.soak import LeanClient, close_all, connect_many, raise_nofile
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    from contenders import actor_pid  # type: ignore[no-redef]
    from soak import LeanClient, close_all, connect_many, raise_nofile  # type: ignore[no-redef]

_ = LeanClient


#: Seconds after the connections closed before "after they closed" is read (the worker's
#: reclaim runs one second after the last departure), when the worker cannot say when it let go.
RELEASE_WAIT = 8.0
#: At most this long for the worker to let go of the closed connections and reclaim.
LET_GO_TIMEOUT = 180.0


def _reclaim_state() -> Any:
    """A function run in the worker (``__ray_call__``): its reclaimer's departures and whether
    the reclaim they owe ran. Nested, so that Ray pickles it by value."""

    def state(worker: Any) -> tuple[int, bool, int] | None:
        reclaimer = worker._router.reclaimer
        if not hasattr(reclaimer, "settled"):
            return None  # a tree before Reclaimer.settled
        return reclaimer.departures, reclaimer.settled, reclaimer.runs

    return state


def worker_census(handle: Any, referrers: int, mostly_free: float = 0.5) -> str:
    """benchmarks/arena_census.py's census of the worker's arenas, run and formatted there
    (``__ray_call__``; the module goes by value: the worker need not import benchmarks/)."""
    import ray
    import ray.cloudpickle

    try:
        from benchmarks import arena_census
    except ImportError:
        import arena_census  # type: ignore[no-redef]
    ray.cloudpickle.register_pickle_by_value(arena_census)
    census, format_census = arena_census.census, arena_census.format_census

    def run(worker: Any) -> str:
        return format_census(census(mostly_free=mostly_free, referrers=referrers), "census in the worker")

    return str(ray.get(handle.__ray_call__.remote(run), timeout=300))


def warm_probes(deployment: Any, handle: Any) -> None:
    """Call the probes this benchmark sends the worker during and after the wave once before the
    baseline: Ray keeps objects per actor method first called (its function descriptor, a key of
    its execution tables), made wherever the allocator has room then; first made during the wave,
    they sit in the wave's arenas and keep them (benchmarks/README.md, "After 5000 connections
    close"). What the router itself makes is not warmed."""
    import ray

    deployment.stats()
    ray.get(handle.__ray_call__.remote(_reclaim_state()), timeout=30)


def wait_let_go(handle: Any, closed: int, timeout: float = LET_GO_TIMEOUT) -> dict[str, Any]:
    """Wait until the worker's router let go of ``closed`` connections (their disconnects
    awaited the registry's release) and ran the reclaim they owe. Under load the close of 5000
    connections can take longer than a fixed wait: a reading before then measures connections
    still closing, not memory kept. Returns the seconds it took and the reclaims so far."""
    import ray

    state = _reclaim_state()
    first = ray.get(handle.__ray_call__.remote(state), timeout=30)
    started = time.monotonic()
    if first is None:
        time.sleep(RELEASE_WAIT)
        return {"let_go_s": None, "reclaims": None}
    while time.monotonic() - started < timeout:  # a fresh worker: every departure is the wave's
        departures, settled, runs = ray.get(handle.__ray_call__.remote(state), timeout=30)
        if departures >= closed and settled:
            return {"let_go_s": time.monotonic() - started, "reclaims": runs}
        time.sleep(0.5)
    raise TimeoutError(f"the worker did not let go of {closed} connections within {timeout:g} s")


def memory(pid: int) -> dict[str, float]:
    import psutil

    info = psutil.Process(pid).memory_full_info()
    return {"rss": info.rss, "uss": info.uss}


def settled_memory(pid: int, seconds: float = 3.0) -> dict[str, float]:
    """Memory once it stops moving: the last of samples 0.5 s apart over ``seconds``."""
    sample = memory(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.5)
        sample = memory(pid)
    return sample


# -- client processes ------------------------------------------------------------------------------
def holder_process(pipe: Any, url: str, count: int, concurrency: int) -> None:
    """Open ``count`` idle connections, report, hold them until told to close."""
    raise_nofile()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        try:
            clients = await connect_many(url, count, concurrency)
        except BaseException as exc:
            pipe.send({"error": f"{type(exc).__name__}: {exc}"})
            return
        pipe.send({"connected": len(clients)})
        await loop.run_in_executor(None, pipe.recv)  # "close"
        alive = sum(not c.closed for c in clients)
        texts = sum(c.texts for c in clients)
        await close_all(clients)
        pipe.send({"alive": alive, "texts": texts})

    asyncio.run(run())


class Holders:
    """Client processes holding idle connections to ``url``."""

    def __init__(self, url: str, connections: int, procs: int, concurrency: int) -> None:
        ctx = mp.get_context("spawn")
        self.children: list[tuple[Any, Any]] = []
        procs = max(1, min(procs, connections))
        for p in range(procs):
            share = connections // procs + (1 if p < connections % procs else 0)
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(target=holder_process, args=(child_end, url, share, concurrency), daemon=True)
            process.start()
            self.children.append((process, parent_end))

    def wait_connected(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        total = 0
        for _process, pipe in self.children:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"connections not open within {timeout:g} s")
            message = pipe.recv()
            if "error" in message:
                raise RuntimeError(f"client process failed: {message['error']}")
            total += message["connected"]
        return total

    def close(self, timeout: float = 30.0) -> dict[str, int]:
        """Close the connections; returns how many were still open and text frames received."""
        summary = Counter()
        for _, pipe in self.children:
            try:
                pipe.send("close")
            except Exception:
                pass
        for process, pipe in self.children:
            try:
                if pipe.poll(timeout):
                    summary.update(pipe.recv())
            except Exception:
                pass
            process.join(10)
        self.kill()
        return dict(summary)

    def kill(self) -> None:
        for process, _ in self.children:
            if process.is_alive():
                process.kill()
                process.join(5)


# -- 1. the deployed worker ------------------------------------------------------------------------
def measure_deployment(args: argparse.Namespace) -> dict[str, Any]:
    from rhizomorph import Config, Deployment

    config = Config(port=0, workers=1, log_level="WARNING", worker_allocator=args.allocator)
    with Deployment(config) as deployment:
        worker_pid = next(iter(deployment.worker_info.values()))["pid"]
        registry_pid = actor_pid(deployment.registry)
        pids = {"worker": worker_pid, **({"registry": registry_pid} if registry_pid else {})}
        worker_handle = deployment.workers[next(iter(deployment.worker_info))]
        warm_probes(deployment, worker_handle)
        before = {name: settled_memory(pid) for name, pid in pids.items()}
        census_before = worker_census(worker_handle, 0, 2.0) if args.census else None
        holders = Holders(deployment.url, args.connections, args.procs, args.concurrency)
        try:
            t0 = time.monotonic()
            opened = holders.wait_connected(args.timeout)
            connect_s = time.monotonic() - t0
            after = {name: settled_memory(pid, 5.0) for name, pid in pids.items()}
            time.sleep(max(0.0, args.hold - 5.0))  # across keepalive pings (websockets: every 20 s)
            held_memory = {name: memory(pid) for name, pid in pids.items()}
            stats = deployment.stats()[0]
            held = holders.close()
        finally:
            holders.kill()
        # The worker gives memory back once the wave of departures ended (gateway/memory.py).
        # The earlier fixed reading, kept for comparison: under load it can come before the close.
        time.sleep(RELEASE_WAIT)
        early = memory(worker_pid)
        let_go = wait_let_go(deployment.workers[next(iter(deployment.worker_info))], opened)
        released = {name: settled_memory(pid) for name, pid in pids.items()}
        census_after = worker_census(worker_handle, args.census) if args.census else None  # after the reading
        return {
            "pids": pids,
            "worker_pythonmalloc": _environ(worker_pid).get("PYTHONMALLOC", "(unset)"),
            "before": before,
            "after": after,
            "held_memory": held_memory,
            "released": released,
            "opened": opened,
            "connect_s": connect_s,
            "router_connections": stats.get("connections"),
            "held": held,
            "early": early,
            "census": (census_before, census_after),
            **let_go,
        }


def _environ(pid: int) -> dict[str, str]:
    import psutil

    return psutil.Process(pid).environ()


# -- 2. the breakdown ------------------------------------------------------------------------------
async def _replica(count: int, procs: int, concurrency: int, timeout: float) -> dict[str, Any]:
    import tracemalloc

    import ray

    from rhizomorph import Config
    from rhizomorph.actors.registry import Registry, RegistryCalls
    from rhizomorph.gateway import server as gateway_server
    from rhizomorph.gateway.router import Router

    config = Config(port=0, workers=1, log_level="WARNING")
    registry = Registry.remote(config.max_services_per_client)
    await registry.ready.remote()
    router = Router(config, "replica", RegistryCalls(registry))
    server = await gateway_server.serve(config, router, gateway_server.reuseport_socket("127.0.0.1", 0))
    port = server.websocket.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()

    def snapshot() -> tuple[Any, Counter]:
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        types = Counter(type(o).__qualname__ for o in gc.get_objects())
        return snap, types

    tracemalloc.start(12)
    holders = None
    try:
        await asyncio.sleep(1.0)
        snap0, types0 = snapshot()
        holders = Holders(f"ws://127.0.0.1:{port}", count, procs, concurrency)
        opened = await loop.run_in_executor(None, holders.wait_connected, timeout)
        await asyncio.sleep(3.0)
        snap1, types1 = snapshot()
        connections = len(router.clients)
        # One connection's objects, for the sizes of its parts.
        conn = next(iter(router.clients), None)
        sizes = _part_sizes(conn, router, server) if conn is not None else {}
    finally:
        tracemalloc.stop()
        if holders is not None:
            await loop.run_in_executor(None, holders.close)
        server.close()
        await server.wait_closed()
        ray.kill(registry, no_restart=True)
    n = max(connections, 1)
    by_file = snap1.compare_to(snap0, "filename")
    by_line = snap1.compare_to(snap0, "lineno")
    by_trace = snap1.compare_to(snap0, "traceback")
    traced = sum(s.size_diff for s in by_file)
    types = {t: (types1[t] - types0.get(t, 0)) / n for t in types1 if types1[t] - types0.get(t, 0) >= n // 2}
    return {
        "opened": opened,
        "connections": connections,
        "traced_per_conn": traced / n,
        "by_file": [(s.traceback[0].filename, s.size_diff / n, s.count_diff / n) for s in by_file[:14]],
        "by_line": [
            (f"{s.traceback[0].filename}:{s.traceback[0].lineno}", s.size_diff / n, s.count_diff / n)
            for s in by_line[:14]
        ],
        "by_owner": _by_owner(by_trace, n),
        "types": sorted(types.items(), key=lambda kv: -kv[1])[:25],
        "sizes": sizes,
    }


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _short(path: str) -> str:
    if path.startswith(REPO):
        return path[len(REPO) :]
    for marker in ("site-packages/", f"python{sys.version_info[0]}.{sys.version_info[1]}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _by_owner(stats: list[Any], n: int) -> list[tuple[str, float]]:
    """Traced bytes per connection, attributed to the innermost frame of the router's own code
    (``gateway/``, ``actors/``) or, failing that, of websockets, else the innermost frame."""
    owners: Counter = Counter()
    for stat in stats:
        frames = list(reversed(stat.traceback))  # a Traceback runs from the oldest frame: innermost first
        owner = None
        for wanted in ("/gateway/", "/actors/", "/websockets/"):
            for frame in frames:
                if wanted in frame.filename:
                    owner = f"{_short(frame.filename)}:{frame.lineno}"
                    break
            if owner:
                break
        owners[owner or f"{_short(frames[0].filename)}:{frames[0].lineno}"] += stat.size_diff
    return [(k, v / n) for k, v in owners.most_common(16)]


def _reachable(root: Any, stop: set[int], limit: int = 200_000) -> dict[int, Any]:
    """Objects reachable from ``root`` through ``gc.get_referents``, not entering anything in
    ``stop`` nor modules, classes, functions and code (shared by every connection)."""
    seen: dict[int, Any] = {}
    todo = [root]
    skip = (type, type(sys), type(_reachable), type(_reachable.__code__))
    while todo and len(seen) < limit:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in stop or isinstance(obj, skip):
            continue
        seen[id(obj)] = obj
        todo.extend(gc.get_referents(obj))
    return seen


def _part_sizes(conn: Any, router: Any, server: Any) -> dict[str, tuple[int, int]]:
    """Deep sizes of one connection's parts: what is reachable from each part and not from
    another connection (so shared objects such as the loop, the router or the config are out)."""
    ws = conn.websocket
    loop = asyncio.get_running_loop()
    from rhizomorph import background

    # background keeps every spawned task (one set for all connections): not a connection's own.
    stop = {id(x) for x in (loop, server, router, getattr(ws, "server", None), background._running)}
    stop |= {id(getattr(m, "__dict__", None)) for m in list(sys.modules.values())}
    other = next((c for c in router.clients if c is not conn), None)
    shared = set(_reachable(other, stop)) if other is not None else set()
    shared |= set(_reachable(other.websocket, stop)) if other is not None else set()
    stop_all = stop | shared
    parts = {
        "ClientConnection (without its socket)": (conn, stop_all | {id(ws)}),
        "  DeliveryQueue": (conn.queue, stop_all | {id(ws), id(conn)}),  # its overflow handler is conn.evict
        "  Identity": (conn.identity, stop_all),
        "websockets ServerConnection (with its protocol, buffers, tasks; not the ClientConnection)": (
            ws,
            stop_all | {id(conn)},
        ),
        "  its sans-I/O protocol": (getattr(ws, "protocol", None), stop_all | {id(conn), id(ws)}),
        "  its transport": (getattr(ws, "transport", None), stop_all | {id(conn), id(ws)}),
    }
    sizes = {}
    for name, (obj, stop_here) in parts.items():
        if obj is None:
            continue
        found = _reachable(obj, stop_here)
        sizes[name] = (sum(sys.getsizeof(o) for o in found.values()), len(found))
    return sizes


def kb(value: float) -> str:
    return f"{value / 1024:.1f} KB"


def main() -> int:
    from rhizomorph.config import ALLOCATORS, Config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes in flight per client process")
    parser.add_argument(
        "--breakdown", type=int, default=1000, help="connections for the in-process tracemalloc breakdown (0: skip)"
    )
    parser.add_argument("--target-kb", type=float, default=50.0)
    parser.add_argument(
        "--hold",
        type=float,
        default=45.0,
        help="seconds to keep the connections idle (the verdict uses the larger reading)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="max seconds to open the connections")
    parser.add_argument(
        "--census",
        type=int,
        default=0,
        help="census of the worker's arenas before the wave and after its reclaim "
        "(benchmarks/arena_census.py; N: referrers shown per kind, 0: no census)",
    )
    parser.add_argument(
        "--allocator", default=Config.worker_allocator, choices=ALLOCATORS, help="Config.worker_allocator"
    )
    args = parser.parse_args()
    nofile = raise_nofile()
    if nofile < args.connections + 1000:
        print(f"warning: RLIMIT_NOFILE is {nofile}, the worker needs about {args.connections + 1000}")

    import ray

    from rhizomorph import ensure_ray

    started = ensure_ray()
    try:
        result = measure_deployment(args)
        breakdown = (
            asyncio.run(_replica(args.breakdown, args.procs, args.concurrency, args.timeout))
            if args.breakdown > 0
            else None
        )
    finally:
        if started:
            ray.shutdown()

    n = max(result["opened"], 1)
    print(
        f"idle connections: {result['opened']} opened in {result['connect_s']:.1f} s "
        f"({args.procs} client processes); the worker counted {result['router_connections']}; "
        f"still open at the end: {result['held'].get('alive')}; load average {os.getloadavg()[0]:.2f}; "
        f"worker_allocator {args.allocator} (the worker's PYTHONMALLOC: {result['worker_pythonmalloc']})"
    )
    for name in result["pids"]:
        b, a, h, r = (result[k][name] for k in ("before", "after", "held_memory", "released"))
        print(
            f"  {name:8s} RSS {b['rss'] / 2**20:7.1f} -> {a['rss'] / 2**20:7.1f} MB "
            f"(USS {b['uss'] / 2**20:6.1f} -> {a['uss'] / 2**20:6.1f} MB): "
            f"{kb((a['rss'] - b['rss']) / n)} RSS, {kb((a['uss'] - b['uss']) / n)} USS per connection; "
            f"after {args.hold:g} s idle: RSS {h['rss'] / 2**20:.1f} MB ({kb((h['rss'] - b['rss']) / n)} per "
            f"connection); after they closed: RSS {r['rss'] / 2**20:.1f} MB"
        )
    worker = result["before"]["worker"]["rss"]
    if result["let_go_s"] is not None:
        print(
            f"  the worker let go of the {result['opened']} connections and reclaimed "
            f"{result['let_go_s'] + RELEASE_WAIT:.1f} s after they closed (reclaims so far: {result['reclaims']}); "
            f"{RELEASE_WAIT:g} s after they closed its RSS was {result['early']['rss'] / 2**20:.1f} MB "
            f"({(result['early']['rss'] / worker - 1) * 100:.0f} % above its baseline)"
        )
    back = result["released"]["worker"]["rss"] / worker - 1
    print(
        f"  after they closed: worker RSS {back * 100:.0f} % above its baseline "
        f"(target <= 20 %: {'met' if back <= 0.20 else 'NOT met'})"
    )
    per_conn = (max(result["after"]["worker"]["rss"], result["held_memory"]["worker"]["rss"]) - worker) / n
    verdict = "met" if per_conn <= args.target_kb * 1024 else "NOT met"
    print(f"  target <= {args.target_kb:g} KB per idle connection (gateway worker RSS): {verdict} ({kb(per_conn)})")
    for text in result["census"]:
        if text:
            print(text)
    if breakdown:
        print(
            f"\nbreakdown: the worker's code in this process, {breakdown['connections']} idle connections, "
            f"tracemalloc on"
        )
        print(
            f"  traced Python allocations {kb(breakdown['traced_per_conn'])} per connection (the deployed "
            f"worker's RSS grew {kb(per_conn)}: the rest is allocator overhead and memory outside Python's "
            f"allocators)"
        )
        print("  by file (per connection: bytes, blocks):")
        for path, size, count in breakdown["by_file"]:
            print(f"    {kb(size):>9} {count:6.1f}  {_short(path)}")
        print("  by allocation site:")
        for where, size, count in breakdown["by_line"]:
            print(f"    {kb(size):>9} {count:6.1f}  {_short(where)}")
        print("  by owner (innermost frame in gateway/ or actors/, else websockets, else the site):")
        for owner, size in breakdown["by_owner"]:
            print(f"    {kb(size):>9}  {owner}")
        print("  objects per connection, by type (gc-tracked; >= 0.5 per connection):")
        print("    " + ", ".join(f"{t} {c:.1f}" for t, c in breakdown["types"]))
        print("  deep size of one connection's parts (sys.getsizeof over gc referents, shared objects excluded):")
        for name, (size, count) in breakdown["sizes"].items():
            print(f"    {kb(size):>9} {count:6d} objects  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
