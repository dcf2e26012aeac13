"""1 gateway worker vs 2 on a multi-client load, side by side in one run.

    python -m benchmarks.bench_workers [--pairs 16] [--messages 4000] [--repeats 3]

``--pairs`` independent sender -> receiver pairs of bare v4 sockets (pre-encoded batch frames of
``batch_max_messages`` 256 B events, as ``bench_batching``'s raw client) burst at the same time;
the rate is every message delivered over the time until the last one arrived. Both routers run
at once on the same Ray runtime and are measured alternately, so machine drift hits both alike.
Clients land on workers where the kernel's ``SO_REUSEPORT`` draw puts them; the run reports how
many pairs crossed workers (``--placement local`` / ``cross`` pair partners of the same / of
different workers instead). The load generator is one Python process (not the Ray driver) sharing
the 2 cores with the routers, so the ratio also says how much CPU the router needs per message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from benchmarks.contenders import ProcessProbe
from benchmarks.loadgen import LoadProcess
from benchmarks.wire import RawPeer
from rhizomorph import Config, Deployment, ensure_ray
from rhizomorph.protocol import envelope, frames


async def _v4_peer(url: str) -> RawPeer:
    peer = await RawPeer.connect(url, wire_protocol=4)
    assert peer.v4, peer.info
    return peer


async def run_pairs(
    url: str, pairs: int, messages: int, size: int, per_frame: int, placement: str = "kernel"
) -> tuple[float, int]:
    """Burst ``messages`` events over each pair at once; returns (msgs/s, pairs across workers)."""
    peers = [await _v4_peer(url) for _ in range(2 * pairs)]
    if placement == "local":  # partners on the same worker wherever the draw allows
        peers.sort(key=lambda p: str(p.info.get("rhizomorph_worker")))
        senders, receivers = peers[0::2], peers[1::2]
    elif placement == "cross":  # partners on different workers wherever the draw allows
        peers.sort(key=lambda p: str(p.info.get("rhizomorph_worker")))
        senders, receivers = peers[:pairs], peers[pairs:]
    else:
        senders, receivers = peers[0::2], peers[1::2]
    crossed = sum(
        s.info.get("rhizomorph_worker") != r.info.get("rhizomorph_worker") for s, r in zip(senders, receivers)
    )
    bursts = []
    for receiver in receivers:
        message = envelope.encode({"type": "bench", "to": receiver.address}, {"data": b"x" * size})
        bursts.append([frames.encode_batch([message] * per_frame)] * (messages // per_frame))

    expected = (messages // per_frame) * per_frame
    started = time.perf_counter()
    receiving = [asyncio.ensure_future(receiver.receive_count(expected)) for receiver in receivers]
    await asyncio.gather(*(sender.send_frames(burst) for sender, burst in zip(senders, bursts)))
    await asyncio.wait_for(asyncio.gather(*receiving), 180)
    rate = pairs * expected / (time.perf_counter() - started)
    await asyncio.gather(*(peer.close() for peer in peers))
    return rate, crossed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--messages", type=int, default=4000, help="per pair")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--placement",
        choices=("kernel", "local", "cross"),
        default="kernel",
        help="kernel: pairs as connected (SO_REUSEPORT draw); local / cross: partners on "
        "the same / different workers where the draw allows",
    )
    args = parser.parse_args()
    ensure_ray()
    rates: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}  # router CPU microseconds per message
    crossed: list[int] = []
    with (
        Deployment(Config(port=0, workers=1)) as one,
        Deployment(Config(port=0, workers=2)) as two,
        LoadProcess() as load,
    ):  # the clients run outside the Ray driver process
        per_frame = one.config.batch_max_messages
        for _ in range(args.repeats):
            for workers, deployment in ((1, one), (2, two)):
                probe = ProcessProbe([info["pid"] for info in deployment.worker_info.values()])
                before = probe.cpu_seconds()
                rate, across = load.run(
                    run_pairs, deployment.url, args.pairs, args.messages, args.size, per_frame, args.placement
                )
                cpu[workers].append((probe.cpu_seconds() - before) / (args.pairs * args.messages) * 1e6)
                rates[workers].append(rate)
                if workers == 2:
                    crossed.append(across)
    print(
        f"{args.pairs} pairs x {args.messages} x {args.size} B events (v4 batch frames of {per_frame}), "
        f"{args.repeats} repeats, placement {args.placement}"
    )
    for workers, values in rates.items():
        print(
            f"  {workers} worker(s): {statistics.median(values):>10,.0f} msgs/s "
            f"(min {min(values):,.0f}, max {max(values):,.0f}); "
            f"router CPU {statistics.median(cpu[workers]):.1f} us/msg"
        )
    print(f"  pairs across the 2 workers per run: {crossed}")
    print(f"  2w / 1w: {statistics.median(rates[2]) / statistics.median(rates[1]):.2f}x")


if __name__ == "__main__":
    main()
