"""Fan-out across nodes: one publisher, 1000 subscribers spread over a 2-node Ray cluster, 1 KB events.

    python benchmarks/bench_fanout_cluster.py [--subscribers 1000] [--nodes 2] [--workers-per-node 1]
                                              [--size 1024] [--paced 50] [--burst 200] [--wire v3|v4]
                                              [--client-procs 2]

The cluster is simulated on this machine with ``ray.cluster_utils.Cluster`` (every node on
127.0.0.1, token auth on), the router runs ``--workers-per-node`` gateway workers per node,
each node on its own port. Subscribers are bare WebSocket clients (handshake, ``subscribe``,
then count frames), split evenly over the nodes and run in ``--client-procs`` processes so the
clients are not one single-threaded bottleneck; the publisher is on node 0.

Two phases, both in the publisher's workspace:
  * paced: one broadcast at a time, the next when every subscriber has the previous one
    (fan-out latency: the time for one event to reach all subscribers);
  * burst: ``--burst`` broadcasts written back to back (fan-out throughput).
Printed per phase: deliveries/s (subscriber x events / elapsed), the median fan-out time
(paced), and Ray calls between workers per broadcast (``stats()["peer_calls"]``), plus the
gateway workers' CPU time and memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

if __name__ == "__main__":  # run as a script: the repository root on the path, for benchmarks.wire
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.local_cluster import peer_traffic, private_environment, start_cluster
from benchmarks.wire import RawPeer

EVENT = "fanout"


class Subscriber:
    """Counts the events one listening peer receives (every message once it has subscribed: no
    header is decoded, so the clients are not the bottleneck of the measurement)."""

    def __init__(self, peer: RawPeer, arrived: Callable[[Subscriber], None]) -> None:
        self.peer = peer
        self.events = 0
        self._arrived = arrived

    def __call__(self, message: bytes) -> None:
        self.events += 1
        self._arrived(self)


async def connect_peer(url: str, *, v4: bool, workspace: str | None = None, token: str | None = None) -> RawPeer:
    peer = await RawPeer.connect(
        url,
        client_id=f"b{uuid.uuid4().hex[:14]}",
        workspace=workspace,
        token=token,
        wire_protocol=4 if v4 else 3,
        timeout=60,
    )
    return peer.listen()


async def publish(publisher: RawPeer, data: bytes) -> None:
    await publisher.send({"type": EVENT, "to": "*", "data": data})


# -- subscriber processes ---------------------------------------------------------------------
def subscriber_process(conn: Any, urls: list[str], workspace: str, token: str, v4: bool) -> None:
    """Connect one subscriber per url, subscribe, then answer the parent's commands:
    ``("wait", n)``: report the time when every subscriber has ``n`` events; ``"stop"``."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(50)

        async def one(url: str) -> RawPeer:
            async with gate:
                peer = await connect_peer(url, workspace=workspace, token=token, v4=v4)
                await peer.call_manager("subscribe", EVENT, timeout=60)
                return peer

        connected = await asyncio.gather(*(one(url) for url in urls))
        state = {"target": None, "reached": asyncio.Event()}

        def check() -> None:
            target = state["target"]
            if target is not None and not state["reached"].is_set() and all(p.events >= target for p in peers):
                state["reached"].set()

        def arrived(subscriber: Subscriber) -> None:
            if subscriber.events >= (state["target"] or 0):
                check()

        peers = [Subscriber(peer, arrived) for peer in connected]
        for subscriber in peers:
            subscriber.peer.on_message = subscriber
        conn.send(("ready", [p.info["rhizomorph_worker"] for p in connected]))
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            _, target = command
            state["target"], state["reached"] = target, asyncio.Event()
            check()
            try:
                await asyncio.wait_for(state["reached"].wait(), 300)
                conn.send(("reached", time.time(), [p.events for p in peers]))
            except TimeoutError:
                conn.send(("timeout", time.time(), [p.events for p in peers]))
        await asyncio.gather(*(p.close() for p in connected))

    asyncio.run(main())
    conn.close()


# -- the run ----------------------------------------------------------------------------------
def worker_usage(deployment: Any) -> dict[str, dict[str, float]]:
    import psutil

    usage = {}
    for worker_id, info in deployment.worker_info.items():
        try:
            proc = psutil.Process(info["pid"])
            cpu = proc.cpu_times()
            memory = proc.memory_full_info()
            usage[worker_id] = {
                "cpu_s": cpu.user + cpu.system,
                "rss_mb": memory.rss / 2**20,
                "uss_mb": memory.uss / 2**20,
            }
        except psutil.Error:
            pass
    return usage


async def measure(args: argparse.Namespace, deployment: Any) -> dict[str, Any]:
    urls = deployment.node_urls
    publisher = await connect_peer(urls[0], v4=args.wire == "v4")
    workspace = publisher.info["workspace"]
    token = await publisher.call_manager("generate_token", timeout=60)
    subscriber_urls = [urls[i % len(urls)] for i in range(args.subscribers)]
    shares = [subscriber_urls[i :: args.client_procs] for i in range(args.client_procs)]
    context = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    started = time.perf_counter()
    for share in shares:
        parent, child = context.Pipe()
        proc = context.Process(target=subscriber_process, args=(child, share, workspace, token, args.wire == "v4"))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    placement: dict[str, int] = {}
    for pipe in pipes:
        kind, workers = await asyncio.to_thread(pipe.recv)
        for worker in workers:
            placement[worker] = placement.get(worker, 0) + 1
    connect_s = time.perf_counter() - started

    async def wait_all(target: int) -> float:
        for pipe in pipes:
            pipe.send(("wait", target))
        answers = [await asyncio.to_thread(pipe.recv) for pipe in pipes]
        bad = [a for a in answers if a[0] != "reached"]
        if bad:
            raise RuntimeError(f"subscribers did not get {target} events: {[min(a[2]) for a in bad]}")
        return max(a[1] for a in answers)

    payload = os.urandom(args.size)
    await asyncio.sleep(1.0)
    results: dict[str, Any] = {
        "subscribers": args.subscribers,
        "placement": placement,
        "connect_s": round(connect_s, 1),
        "peer_workers_of_publisher": len(deployment.workers) - 1,
    }
    sent = 0
    # paced: one event at a time
    calls0, items0 = peer_traffic(deployment)
    usage0 = worker_usage(deployment)
    latencies = []
    phase_start = time.time()
    for _ in range(args.paced):
        t = time.time()
        await publish(publisher, payload)
        sent += 1
        latencies.append(await wait_all(sent) - t)
    elapsed = time.time() - phase_start
    calls1, items1 = peer_traffic(deployment)
    results["paced"] = {
        "broadcasts": args.paced,
        "deliveries_per_s": round(args.subscribers * args.paced / elapsed),
        "fanout_ms_median": round(statistics.median(latencies) * 1000, 1),
        "fanout_ms_max": round(max(latencies) * 1000, 1),
        "ray_calls_per_broadcast": round((calls1 - calls0) / args.paced, 3),
        "peer_items_per_broadcast": round((items1 - items0) / args.paced, 3),
    }
    # burst: back to back
    usage1 = worker_usage(deployment)
    phase_start = time.time()
    for _ in range(args.burst):
        await publish(publisher, payload)
    sent += args.burst
    done = await wait_all(sent)
    elapsed = done - phase_start
    calls2, items2 = peer_traffic(deployment)
    usage2 = worker_usage(deployment)
    results["burst"] = {
        "broadcasts": args.burst,
        "deliveries_per_s": round(args.subscribers * args.burst / elapsed),
        "elapsed_s": round(elapsed, 2),
        "ray_calls_per_broadcast": round((calls2 - calls1) / args.burst, 3),
        "peer_items_per_broadcast": round((items2 - items1) / args.burst, 3),
        "worker_cpu_s": {w: round(usage2[w]["cpu_s"] - usage1[w]["cpu_s"], 2) for w in usage2 if w in usage1},
    }
    results["burst"]["worker_cpu_us_per_delivery"] = round(
        sum(results["burst"]["worker_cpu_s"].values()) * 1e6 / (args.subscribers * args.burst), 1
    )
    results["paced"]["worker_cpu_s"] = {
        w: round(usage1[w]["cpu_s"] - usage0[w]["cpu_s"], 2) for w in usage1 if w in usage0
    }
    results["workers_memory_mb"] = {
        w: {"rss": round(u["rss_mb"]), "uss": round(u["uss_mb"])} for w, u in usage2.items()
    }
    for pipe in pipes:
        pipe.send("stop")
    for proc in procs:
        await asyncio.to_thread(proc.join, 30)
        if proc.is_alive():
            proc.kill()
    await publisher.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--workers-per-node", type=int, default=1)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--paced", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--wire", choices=("v3", "v4"), default="v3")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    args = parser.parse_args()

    token_dir = private_environment("rzb-")
    import ray

    from rhizomorph import Config, Deployment

    cluster = deployment = None
    try:
        cluster, _ = start_cluster(args.nodes)
        config = Config(
            port=0,
            workers=args.workers_per_node,
            distinct_node_ports=True,
            log_level="WARNING",
            max_connections_per_worker=0,
        )
        deployment = Deployment(config).start()
        results = asyncio.run(measure(args, deployment))
    finally:
        if deployment is not None:
            deployment.stop()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(token_dir, ignore_errors=True)

    print(
        f"fan-out 1 -> {args.subscribers} subscribers over {args.nodes} nodes "
        f"({args.workers_per_node} worker(s)/node, {args.wire}, {args.size} B events); "
        f"placement {results['placement']}, connected in {results['connect_s']} s"
    )
    for phase in ("paced", "burst"):
        r = results[phase]
        extra = (
            f", fan-out median {r['fanout_ms_median']} ms (max {r['fanout_ms_max']} ms)"
            if phase == "paced"
            else f", {r['elapsed_s']} s"
        )
        print(
            f"  {phase:5} {r['broadcasts']:4} broadcasts: {r['deliveries_per_s']:>8} deliveries/s{extra}; "
            f"Ray calls/broadcast {r['ray_calls_per_broadcast']} (items/broadcast {r['peer_items_per_broadcast']}); "
            f"worker CPU s {r['worker_cpu_s']}"
            + (f" = {r['worker_cpu_us_per_delivery']} us/delivery" if phase == "burst" else "")
        )
    print(f"  gateway worker memory (MB): {results['workers_memory_mb']}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
