"""Broadcasts between two gateway workers go only where a subscriber is (``router2``).

A sender on one worker and, in its workspace, a listener on the other: an event type nobody
subscribed to is forwarded to no peer (``peer_frames`` stays put), and once the listener
subscribed, the event reaches it across the worker hop, forwarded once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import eventually


async def emit(server: Any, message: dict[str, Any]) -> None:
    result = server.emit(message)
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        await result


async def peer_frames(router: Any, worker: str, peer: str) -> int:
    stats = {s["worker_id"]: s for s in await asyncio.to_thread(router.stats)}
    return stats[worker]["peer_frames"].get(peer, 0)


async def test_an_event_goes_only_to_the_worker_with_a_subscriber(router2, connect):
    sender = await connect(router2.url)
    token = await sender.generate_token()
    for _ in range(40):  # the kernel spreads connections over the shared port
        listener = await connect(router2.url, workspace=sender.config.workspace, token=token)
        if listener.config.rhizomorph_worker != sender.config.rhizomorph_worker:
            break
    else:
        raise AssertionError("no connection reached the second worker")
    here, there = sender.config.rhizomorph_worker, listener.config.rhizomorph_worker
    received: list[Any] = []
    listener.on("news", lambda message: received.append(message["data"]))

    before = await peer_frames(router2, here, there)
    for i in range(20):
        await emit(sender, {"type": "news", "to": "*", "data": i})
    assert await sender.echo("after the events") == "after the events"  # the sender's worker routed them
    assert await peer_frames(router2, here, there) == before  # nobody subscribed: nothing forwarded

    await listener.subscribe("news")  # returns once the sender's worker knows
    await emit(sender, {"type": "news", "to": "*", "data": "hello"})
    await eventually(lambda: received == ["hello"], timeout=5)
    assert await peer_frames(router2, here, there) == before + 1

    await listener.unsubscribe("news")
    await emit(sender, {"type": "news", "to": "*", "data": "unheard"})
    assert await sender.echo("again") == "again"
    await asyncio.sleep(0.2)
    assert received == ["hello"]
    assert await peer_frames(router2, here, there) == before + 1
