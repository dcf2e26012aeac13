"""High fan-out through rhizomorph, with the released hypha-rpc client.

    python examples/fanout.py [--server-url ws://127.0.0.1:9527] [--callers 20] [--calls 50]
                              [--subscribers 20] [--events 50]

1. One service, many callers: a provider registers a public service; every caller is its own
   anonymous client (its own workspace) and calls it concurrently. Each result is checked.
2. One publisher, many subscribers: the publisher mints a token for its workspace, the
   subscribers join that workspace with it (a broadcast never leaves its workspace) and
   subscribe to ``tick``; the publisher emits; every subscriber must see every tick, in order.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from typing import Any

from hypha_rpc import connect_to_server


async def _connect_many(url: str, count: int, **options: Any) -> list[Any]:
    # A few at a time: each handshake is a round of manager calls; a burst of hundreds only queues.
    clients: list[Any] = []
    for start in range(0, count, 10):
        clients += await asyncio.gather(
            *(connect_to_server({"server_url": url, **options}) for _ in range(min(10, count - start)))
        )
    return clients


async def _close(clients: list[Any]) -> None:
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)


async def one_service_many_callers(url: str, callers: int, calls: int) -> dict[str, Any]:
    provider = await connect_to_server({"server_url": url})
    served = 0

    def add(a: int, b: int) -> int:
        nonlocal served
        served += 1
        return a + b

    clients: list[Any] = []
    try:
        info = await provider.register_service({"id": "fanout-adder", "config": {"visibility": "public"}, "add": add})
        clients = await _connect_many(url, callers)
        services = await asyncio.gather(*(c.get_service(info["id"]) for c in clients))
        latencies: list[float] = []

        async def caller(index: int, service: Any) -> None:
            for i in range(calls):
                started = time.perf_counter()
                result = await service.add(index, i)
                latencies.append(time.perf_counter() - started)
                if result != index + i:
                    raise AssertionError(f"caller {index}: add({index}, {i}) returned {result}")

        started = time.perf_counter()
        await asyncio.gather(*(caller(n, s) for n, s in enumerate(services)))
        elapsed = time.perf_counter() - started
    finally:
        await _close(clients + [provider])
    latencies.sort()
    return {
        "calls": len(latencies),
        "served": served,
        "seconds": elapsed,
        "calls_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


async def one_publisher_many_subscribers(
    url: str, subscribers: int, events: int, timeout: float = 30.0
) -> dict[str, Any]:
    publisher = await connect_to_server({"server_url": url})
    clients: list[Any] = []
    try:
        workspace = publisher.config.workspace
        token = await publisher.generate_token()  # read-write: each client registers its built-in service
        clients = await _connect_many(url, subscribers, workspace=workspace, token=token)
        received: list[list[int]] = [[] for _ in clients]
        everyone = asyncio.Event()

        def listener(seen: list[int]) -> Any:
            def on_tick(message: dict[str, Any]) -> None:
                seen.append(message["data"]["seq"])
                if all(len(r) >= events for r in received):
                    everyone.set()

            return on_tick

        for client, seen in zip(clients, received):
            client.on("tick", listener(seen))
        await asyncio.gather(*(c.subscribe("tick") for c in clients))

        started = time.perf_counter()
        for seq in range(events):
            sent = publisher.emit({"type": "tick", "to": "*", "data": {"seq": seq, "payload": "x" * 100}})
            if asyncio.isfuture(sent) or asyncio.iscoroutine(sent):
                await sent
        try:
            await asyncio.wait_for(everyone.wait(), timeout)
        except TimeoutError:
            pass  # reported below as missing deliveries
        elapsed = time.perf_counter() - started
    finally:
        await _close(clients + [publisher])
    delivered = sum(len(r) for r in received)
    in_order = all(r == list(range(events)) for r in received)
    return {
        "events": events,
        "subscribers": subscribers,
        "delivered": delivered,
        "expected": events * subscribers,
        "in_order": in_order,
        "seconds": elapsed,
        "deliveries_per_s": delivered / elapsed if elapsed else 0.0,
    }


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-url", default="ws://127.0.0.1:9527")
    parser.add_argument("--callers", type=int, default=20)
    parser.add_argument("--calls", type=int, default=50, help="calls per caller")
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--events", type=int, default=50)
    args = parser.parse_args(argv)

    rpc = await one_service_many_callers(args.server_url, args.callers, args.calls)
    print(
        f"one service, {args.callers} callers: {rpc['calls']} calls in {rpc['seconds']:.2f} s "
        f"({rpc['calls_per_s']:.0f}/s), p50 {rpc['p50_ms']:.1f} ms, p99 {rpc['p99_ms']:.1f} ms",
        flush=True,
    )
    pubsub = await one_publisher_many_subscribers(args.server_url, args.subscribers, args.events)
    print(
        f"one publisher, {args.subscribers} subscribers: {pubsub['delivered']}/{pubsub['expected']} deliveries "
        f"in {pubsub['seconds']:.2f} s ({pubsub['deliveries_per_s']:.0f}/s), "
        f"{'in order' if pubsub['in_order'] else 'OUT OF ORDER OR MISSING'}",
        flush=True,
    )
    return {"rpc": rpc, "pubsub": pubsub}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("RPC").setLevel(logging.ERROR)  # hypha-rpc warns on every disconnect we ask for
    asyncio.run(main())
