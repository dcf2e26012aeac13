"""CPU per message of one target's delivery queue (``rhizomorph/gateway/delivery.py``), batching on or off.

    python -m benchmarks.delivery_cpu [--size 20000] [--messages 20000] [--no-batching] [--wire v3] [--routed]
    valgrind --tool=callgrind python -m benchmarks.delivery_cpu ...   # instructions, load-free

Messages arrive one per event-loop turn, as calls from a socket's ``data_received`` do, at a
v4 target (``--wire v3``: a released hypha-rpc client's, one WebSocket message per frame)
whose socket is always ready (a ``DirectWrite`` that takes every write at once): the
queue's own cost per message, the writer task, the batcher and the batch frame, without Ray,
sockets or routing (``--routed``: the whole path in a gateway worker, socket bytes in to
socket bytes out, ``benchmarks/route_cpu.py``). Prints one JSON line: CPU µs per message
and the flush reasons. To compare two source trees, run it with ``PYTHONPATH`` set to each,
from each tree, in alternation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from benchmarks import route_cpu
from rhizomorph.gateway.delivery import DeliveryQueue
from rhizomorph.protocol.batching import BatchPolicy


class ReadySocket:
    """A socket that is always ready: writes are counted, not sent."""

    def __init__(self) -> None:
        self.messages = 0

    def ready(self) -> bool:
        return True

    def write(self, messages: list[bytes]) -> None:
        self.messages += len(messages)

    async def send(self, data: bytes) -> None:
        self.messages += 1


async def run(size: int, messages: int, batching: bool, wire: str = "v4") -> dict[str, Any]:
    socket = ReadySocket()
    policy = BatchPolicy(enabled=batching)
    queue = DeliveryQueue("ws/c", socket.send, policy, wire_v4=wire == "v4", direct=socket)
    frame = b"\x81" + b"x" * (size - 1)
    warmup = messages // 10
    for _ in range(warmup):
        queue.put(frame)
        await asyncio.sleep(0)
    elapsed = await route_cpu.one_per_turn(queue.put, frame, messages)
    stats = queue.metrics()
    return {
        **route_cpu.result(size, batching, wire, messages, elapsed),
        "reasons": {r: n for r, n in stats["reasons"].items() if n},
        "written": socket.messages,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="bytes per message (20 KB: bench_claims's medium)")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--no-batching", dest="batching", action="store_false")
    parser.add_argument("--wire", choices=("v4", "v3"), default="v4", help="the target's client (v3: hypha-rpc)")
    parser.add_argument("--routed", action="store_true", help="the whole routed path (benchmarks/route_cpu.py)")
    args = parser.parse_args()
    measure = route_cpu.run if args.routed else run
    print(json.dumps(asyncio.run(measure(args.size, args.messages, args.batching, args.wire))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
