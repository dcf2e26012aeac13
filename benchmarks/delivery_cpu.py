"""CPU per message of one target's delivery queue (``rhizomorph/gateway/delivery.py``), batching on or off.

    python -m benchmarks.delivery_cpu [--size 20000] [--messages 20000] [--no-batching] [--wire v3]
                                      [--busy [--burst 8]] [--routed [--read 256000 [--unaligned]] [--stream] [--slow]]
    valgrind --tool=callgrind python -m benchmarks.delivery_cpu ...   # instructions, load-free

Messages arrive one per event-loop turn, as calls from a socket's ``data_received`` do, at a
v4 target (``--wire v3``: a released hypha-rpc client's, one WebSocket message per frame)
whose socket is always ready (a ``DirectWrite`` that takes every write at once): the
queue's own cost per message, the writer task, the batcher and the batch frame, without Ray,
sockets or routing (``--routed``: the whole path in a gateway worker, socket bytes in to
socket bytes out, ``benchmarks/route_cpu.py``). ``--busy``: the socket is never ready for a direct
write (a transport above its high-water mark), so every frame goes through the writer task, whose
every send awaits one loop turn (the drain), and ``--burst`` frames arrive per turn, routed from one
read (a ``WriteGroup``): the path of a burst of calls to a target that reads slower than they come.
Prints one JSON line: CPU µs per message and the flush reasons. To compare two source trees, run
it with ``PYTHONPATH`` set to each, from each tree, in alternation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from benchmarks import route_cpu
from rhizomorph.gateway.delivery import WRITES, DeliveryQueue
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

    async def send_frames(self, frames: list[bytes]) -> None:
        self.messages += len(frames)


class BusySocket(ReadySocket):
    """A socket that never takes a direct write: every send waits one loop turn for its drain."""

    def ready(self) -> bool:
        return False

    async def send(self, data: bytes) -> None:
        self.messages += 1
        await asyncio.sleep(0)

    async def send_frames(self, frames: list[bytes]) -> None:
        self.messages += len(frames)
        await asyncio.sleep(0)


async def run(
    size: int, messages: int, batching: bool, wire: str = "v4", busy: bool = False, burst: int = 1
) -> dict[str, Any]:
    socket = BusySocket() if busy else ReadySocket()
    policy = BatchPolicy(enabled=batching)
    queue = DeliveryQueue(
        "ws/c", socket.send, policy, wire_v4=wire == "v4", direct=socket, send_frames=socket.send_frames
    )
    frame = b"\x81" + b"x" * (size - 1)

    async def deliver(count: int) -> None:
        for _ in range(0, count, burst):
            if burst == 1:  # a read of one frame is no write group
                queue.put(frame)
            else:
                WRITES.begin()  # one read's frames
                try:
                    for _ in range(burst):
                        queue.put(frame)
                finally:
                    WRITES.end()
            await asyncio.sleep(0)  # the next read comes on a later turn of the loop
        while len(queue.batcher):
            await asyncio.sleep(0)

    await deliver(messages // 10)  # warm-up
    started = time.process_time()
    await deliver(messages)
    await asyncio.sleep(0)
    elapsed = time.process_time() - started
    stats = queue.metrics()
    return {
        **route_cpu.result(size, batching, wire, messages, elapsed),
        "busy": busy,
        "burst": burst,
        "reasons": {r: n for r, n in stats["reasons"].items() if n},
        "written": socket.messages,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="bytes per message (20 KB: bench_claims's medium)")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--no-batching", dest="batching", action="store_false")
    parser.add_argument("--wire", choices=("v4", "v3"), default="v4", help="the target's client (v3: hypha-rpc)")
    parser.add_argument("--busy", action="store_true", help="a socket that never takes a direct write")
    parser.add_argument("--burst", type=int, default=1, help="frames per read (one write group)")
    parser.add_argument("--routed", action="store_true", help="the whole routed path (benchmarks/route_cpu.py)")
    parser.add_argument("--read", type=int, default=0, help="--routed: bytes per read of the caller's socket")
    parser.add_argument("--stream", action="store_true", help="--routed: a v4 caller's chunk streams")
    parser.add_argument("--slow", action="store_true", help="--routed: the target's socket pauses after big writes")
    parser.add_argument(
        "--unaligned", action="store_true", help="--routed --read: reads cut from 10 calls in a row, not per call"
    )
    args = parser.parse_args()
    if args.routed:
        result = route_cpu.run(
            args.size, args.messages, args.batching, args.wire, args.read, args.stream, args.slow, args.unaligned
        )
    else:
        result = run(args.size, args.messages, args.batching, args.wire, args.busy, max(1, args.burst))
    print(json.dumps(asyncio.run(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
