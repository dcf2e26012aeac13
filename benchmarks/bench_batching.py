"""Batching on vs off, side by side in one run: 2000 x 256 B events to one v4 target.

    python -m benchmarks.bench_batching [--messages 2000] [--size 256] [--repeats 3]

"On" is the router's default policy and the v4 client's default send-side batching; "off"
disables both (the router at run time, the client at connect). Prints msgs/s for each (median
of the repeats, with min-max) and the ratio, for two kinds of client:

- ``hypha-rpc``: rhizomorph's v4 client (hypha-rpc's RPC layer), what a user sees;
- ``raw``: bare WebSocket clients with pre-encoded messages (a batch frame of
  ``batch_max_messages`` when on, one frame per message when off), so the router's own rate
  shows, not the client library's.

The same raw messages also cross the bare websockets relay (``benchmarks/bare_relay.py``), one
frame per message: the floor any router is compared with ("raw on / bare relay"). The clients
run in a process of their own, not in the Ray driver (``benchmarks/loadgen.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from benchmarks.clients import event_burst
from benchmarks.contenders import BareRelay
from benchmarks.loadgen import LoadProcess
from benchmarks.wire import RawPeer
from rhizomorph import Config, Deployment, ensure_ray
from rhizomorph.client import connect_to_server
from rhizomorph.protocol import envelope, frames
from rhizomorph.protocol.batching import BatchPolicy


async def one_run(url: str, batching: bool, messages: int, size: int) -> float:
    """Send ``messages`` events at once between two v4 clients; returns msgs/s until the last arrived."""
    policy = BatchPolicy(enabled=batching)
    target = await connect_to_server({"server_url": url}, batching=policy)
    sender = await connect_to_server({"server_url": url}, batching=policy)
    rate = await event_burst(sender, target, messages, b"x" * size)
    await sender.disconnect()
    await target.disconnect()
    return rate


async def _raw_peer(url: str, v4: bool) -> RawPeer:
    peer = await RawPeer.connect(url, wire_protocol=4 if v4 else 3)
    assert peer.v4 or not v4, peer.info
    return peer


async def raw_run(url: str, batching: bool, messages: int, size: int, per_frame: int, v4: bool = True) -> float:
    """Pre-encoded messages from a bare socket to another (v4 handshake unless ``v4`` is false,
    e.g. for the bare relay); returns msgs/s until the last arrived."""
    target = await _raw_peer(url, v4)
    sender = await _raw_peer(url, v4)
    message = envelope.encode({"type": "bench", "to": target.address}, {"data": b"x" * size})
    group = per_frame if batching else 1
    outgoing = [frames.encode_batch([message] * group) if group > 1 else message for _ in range(messages // group)]

    started = time.perf_counter()
    receiving = asyncio.ensure_future(target.receive_count(len(outgoing) * group))
    await sender.send_frames(outgoing)
    await asyncio.wait_for(receiving, 120)
    rate = len(outgoing) * group / (time.perf_counter() - started)
    await sender.close()
    await target.close()
    return rate


def compare(deployment: Deployment, relay_url: str, messages: int, size: int, repeats: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {f"{c} {m}": [] for c in ("hypha-rpc", "raw") for m in ("on", "off")}
    rates["bare relay"] = []
    per_frame = deployment.config.batch_max_messages
    with LoadProcess() as load:  # the clients run outside the Ray driver process
        for _ in range(repeats):
            for mode in ("on", "off"):  # interleaved, so drift in the machine hits both alike
                deployment.set_batching(enable_message_batching=mode == "on")
                rates[f"hypha-rpc {mode}"].append(load.run(one_run, deployment.url, mode == "on", messages, size))
                rates[f"raw {mode}"].append(load.run(raw_run, deployment.url, mode == "on", messages, size, per_frame))
            rates["bare relay"].append(load.run(raw_run, relay_url, False, messages, size, 1, False))
    deployment.set_batching(enable_message_batching=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    ensure_ray()
    relay = BareRelay()
    relay.start()
    try:
        with Deployment(Config(port=0, workers=args.workers)) as deployment:
            rates = compare(deployment, relay.url, args.messages, args.size, args.repeats)
    finally:
        relay.stop()
    print(f"{args.messages} x {args.size} B events to one v4 target, {args.repeats} repeats, {args.workers} worker(s)")
    for client in ("hypha-rpc", "raw"):
        for mode in ("on", "off"):
            values = rates[f"{client} {mode}"]
            print(
                f"  {client:9} batching {mode:3}: {statistics.median(values):>10,.0f} msgs/s "
                f"(min {min(values):,.0f}, max {max(values):,.0f})"
            )
        ratio = statistics.median(rates[f"{client} on"]) / statistics.median(rates[f"{client} off"])
        print(f"  {client:9} ratio on/off: {ratio:.2f}x")
    relay_rates = rates["bare relay"]
    print(
        f"  bare relay, one frame per message: {statistics.median(relay_rates):>10,.0f} msgs/s "
        f"(min {min(relay_rates):,.0f}, max {max(relay_rates):,.0f})"
    )
    print(f"  raw on / bare relay: {statistics.median(rates['raw on']) / statistics.median(relay_rates):.2f}x")


if __name__ == "__main__":
    main()
