"""Back-pressure: a client that does not read is evicted; its senders are told; memory stays flat."""

from __future__ import annotations

import asyncio

import psutil
import pytest
import websockets

from benchmarks.wire import RawPeer
from rhizomorph import Config, Deployment
from rhizomorph.protocol.envelope import encode

QUEUE_BOUND = 4 * 1024 * 1024
FRAME = 64 * 1024
FLOOD = 100 * 1024 * 1024  # 25x the bound


@pytest.fixture(scope="module")
def tight_router(ray_runtime):
    deployment = Deployment(Config(port=0, workers=1, max_queue_bytes=QUEUE_BOUND, write_timeout=3.0)).start()
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def deadline_router(ray_runtime):
    """A router whose queue bound is far above what the write-deadline test sends: only the deadline
    can evict there (with ``tight_router``'s bound, 10 MiB to a sleeper overflows the queue first)."""
    config = Config(port=0, workers=1, max_queue_bytes=16 * QUEUE_BOUND, write_timeout=3.0)
    deployment = Deployment(config).start()
    yield deployment
    deployment.stop()


async def sleeping_client(raw_peers, url: str) -> RawPeer:
    """A client that stops reading after the handshake (websockets then stops reading the socket:
    it does not see the router close it either, so the test must close it itself)."""
    return await raw_peers(url, max_queue=1)


def rss(deployment: Deployment) -> int:
    return sum(psutil.Process(info["pid"]).memory_info().rss for info in deployment.worker_info.values())


async def test_slow_consumer_is_evicted_senders_are_told_and_memory_stays_flat(tight_router, raw_peers):
    from hypha_rpc import connect_to_server

    url = tight_router.url
    sleeper = await sleeping_client(raw_peers, url)
    target = sleeper.address
    sender = await raw_peers(url)
    bystander = await connect_to_server({"server_url": url})
    try:
        await bystander.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
        bystander_echo = await bystander.get_service(f"{bystander.config.workspace}/{bystander.config.client_id}:echo")

        before = rss(tight_router)
        payload = {"args": [b"\0" * FRAME], "promise": "*"}
        sent = FLOOD // FRAME
        for i in range(sent):
            await sender.ws.send(
                encode({"type": "method", "to": target, "method": "services.x.y", "session": f"s{i}"}, payload)
            )
        rejected = set()

        async def collect() -> None:
            while True:
                message = await sender.next_binary(timeout=10)
                if message.get("method", "").endswith(".reject"):
                    rejected.add(message["method"].split(".")[0])

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(collect(), 15)
        after = rss(tight_router)

        stats = tight_router.stats()[0]
        assert stats["evicted"] >= 1
        assert target not in stats["clients"]
        # Every frame that did not fit was answered; nothing was held beyond the bound.
        assert len(rejected) >= sent - (QUEUE_BOUND + 16 * 1024 * 1024) // FRAME
        assert after - before < 48 * 1024 * 1024, (
            f"RSS grew by {(after - before) >> 20} MiB for a {FLOOD >> 20} MiB flood"
        )
        # Other clients are unaffected.
        assert await bystander_echo.echo("still fine") == "still fine"
        with pytest.raises(websockets.ConnectionClosed):
            for _ in range(10_000):
                await asyncio.wait_for(sleeper.ws.recv(), 10)
    finally:
        await asyncio.wait_for(bystander.disconnect(), 5)


async def test_stalled_write_is_evicted_by_the_write_deadline(deadline_router, raw_peers):
    """A consumer that reads nothing, sent less in all than the queue bound: the write deadline
    (3 s here) evicts it."""
    url = deadline_router.url
    sleeper = await sleeping_client(raw_peers, url)
    target = sleeper.address
    sender = await raw_peers(url)
    evicted_before = deadline_router.stats()[0]["evicted"]
    # Enough to fill the socket buffers (so a write blocks), less in all than the queue bound.
    frames = 40
    assert frames * 256 * 1024 < deadline_router.config.max_queue_bytes
    for _ in range(frames):
        await sender.ws.send(
            encode({"type": "method", "to": target, "method": "services.x.y"}, {"args": [b"\1" * (256 * 1024)]})
        )
    for _ in range(100):
        await asyncio.sleep(0.2)
        if deadline_router.stats()[0]["evicted"] > evicted_before:
            break
    assert deadline_router.stats()[0]["evicted"] == evicted_before + 1
    # Evicted, but this end has read nothing since the handshake, the close included: drop it.
    await sleeper.abort()
