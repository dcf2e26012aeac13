"""Per-target batching and API v4, end to end: real router, real Ray, real hypha-rpc clients."""

from __future__ import annotations

import asyncio
import time

import pytest

from rhizomorph.client import wire_protocol
from tests.helpers import address, eventually, on_two_workers


def target_metrics(deployment, target: str) -> dict:
    for worker in deployment.stats():
        if target in worker["targets"]:
            return worker["targets"][target]
    raise AssertionError(f"{target} is on no worker")


async def emit_all(server, target: str, count: int, event_type: str = "seq") -> None:
    """Fire ``count`` sequenced events at once (as a busy producer does)."""
    results = [server.emit({"type": event_type, "to": target, "data": i}) for i in range(count)]
    await asyncio.gather(*(r for r in results if asyncio.iscoroutine(r) or isinstance(r, asyncio.Future)))


@pytest.fixture
def clients(connect):
    """``clients(url, v4)``: a hypha-rpc (v3) or rhizomorph (v4) client with a 30 s method
    timeout, closed after the test."""
    return lambda url, v4: connect(url, v4=v4, method_timeout=30)


async def test_v4_is_negotiated_and_v3_stays_v3(router, clients):
    assert wire_protocol(await clients(router.url, v4=True)) == 4
    assert wire_protocol(await clients(router.url, v4=False)) == 3


async def test_a_v4_client_that_fell_back_to_v3_says_so_to_its_peers(ray_runtime, router, clients):
    from rhizomorph import Config, Deployment

    v3_only = Deployment(Config(port=0, workers=1, enable_v4=False)).start()
    try:
        fell_back, peer = await clients(v3_only.url, True), await clients(v3_only.url, False)
        assert wire_protocol(fell_back) == 3
        builtin = await peer.get_service(f"{fell_back.config.workspace}/{fell_back.config.client_id}:built-in")
        assert getattr(builtin.config, "wire_protocol", 3) == 3  # peers would stream to a v4 one
        confirmed, peer4 = await clients(router.url, True), await clients(router.url, False)
        builtin = await peer4.get_service(f"{confirmed.config.workspace}/{confirmed.config.client_id}:built-in")
        assert builtin.config.wire_protocol == 4
    finally:
        v3_only.stop()


async def test_burst_to_v4_target_arrives_in_few_frames_intact_and_in_order(router, clients):
    target = await clients(router.url, v4=True)
    sender = await clients(router.url, v4=True)
    received = []
    target.on("seq", lambda message: received.append(message["data"]))
    before = target_metrics(router, address(target))

    await emit_all(sender, address(target), 2000)
    await eventually(lambda: len(received) >= 2000, timeout=20)

    assert received == list(range(2000))
    after = target_metrics(router, address(target))
    frames = after["frames_written"] - before["frames_written"]
    assert after["messages"] - before["messages"] >= 2000
    assert frames <= 2000 / 4, f"2000 messages took {frames} frames"


async def test_v3_target_gets_one_message_per_frame_in_order(router, clients):
    target = await clients(router.url, v4=False)
    sender = await clients(router.url, v4=True)
    received = []
    target.on("seq", lambda message: received.append(message["data"]))
    await emit_all(sender, address(target), 500)
    await eventually(lambda: len(received) >= 500, timeout=20)
    assert received == list(range(500))
    metrics = target_metrics(router, address(target))
    assert metrics["wire"] == "v3"
    assert metrics["frames_written"] == metrics["messages"]  # never several messages in one v3 frame


async def test_lone_call_on_idle_connection_is_flushed_at_once(router, clients):
    provider = await clients(router.url, v4=True)
    consumer = await clients(router.url, v4=True)
    await provider.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
    echo = await consumer.get_service(f"{address(provider)}:echo")
    await asyncio.sleep(0.2)  # let every queue go idle
    before = target_metrics(router, address(provider))
    assert await echo.echo("lone") == "lone"
    after = target_metrics(router, address(provider))
    assert after["reasons"]["idle"] == before["reasons"]["idle"] + 1
    assert after["reasons"]["timer"] == before["reasons"]["timer"]


@pytest.mark.parametrize("provider_v4,consumer_v4", [(True, False), (False, True), (True, True)])
async def test_v3_and_v4_call_each_other_including_2mb(router, clients, provider_v4, consumer_v4):
    provider = await clients(router.url, v4=provider_v4)
    consumer = await clients(router.url, v4=consumer_v4)
    await provider.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
    echo = await consumer.get_service(f"{address(provider)}:echo")
    for size in (10, 20_000, 2_000_000):
        payload = bytes(range(256)) * (size // 256) + b"!" * (size % 256)
        assert await echo.echo(payload) == payload


async def race_transfer_and_small_calls(deployment, consumer, provider) -> None:
    """Start a 16 MB transfer and, in the same event-loop turn, 100 small calls to the same
    target: all small ones must finish before the transfer does.

    The small calls leave the caller between the transfer's first chunks (its client queues a
    chunk only once its outbox is empty), so on a router that keeps them in order they reach
    the provider long before the last chunk. They are not sent once the router reports the
    stream open: on a loaded machine that report can come after the last chunk has left."""
    await provider.register_service(
        {"id": "sink", "config": {"visibility": "public"}, "take": lambda data: len(data), "ping": lambda i: i}
    )
    sink = await consumer.get_service(f"{address(provider)}:sink")
    finished: dict[str, float] = {}

    async def big() -> None:
        assert await sink.take(b"\x07" * 16_000_000) == 16_000_000
        finished["big"] = time.monotonic()

    async def small(i: int) -> None:
        assert await sink.ping(i) == i
        finished[f"small{i}"] = time.monotonic()

    opened = streams_opened(deployment)
    await asyncio.gather(big(), *(small(i) for i in range(100)))
    assert streams_opened(deployment) > opened  # the transfer travelled as a stream
    late = [k for k, v in finished.items() if k != "big" and v >= finished["big"]]
    assert not late, f"{len(late)} small calls finished after the transfer"


async def test_large_transfer_does_not_hold_up_small_calls(router, clients):
    provider = await clients(router.url, v4=True)
    consumer = await clients(router.url, v4=True)
    await race_transfer_and_small_calls(router, consumer, provider)


async def test_a_stream_cut_by_its_socket_fails_its_call_and_the_client_calls_on(router, clients):
    # The caller's socket dies mid-stream (as when its gateway worker is killed): the call
    # fails now, with its send's own error. Not on the router's word after the reconnect (a
    # killed worker says nothing), nor at its timeout (hypha-rpc starts the timer only once
    # the send is done: never). The client, reconnected, calls again.
    provider = await clients(router.url, v4=True)
    consumer = await clients(router.url, v4=True)
    await provider.register_service({"id": "sink", "config": {"visibility": "public"}, "take": lambda d: len(d)})
    sink = await consumer.get_service(f"{address(provider)}:sink")
    websocket = consumer.rpc._connection._websocket
    before = websocket.batch_metrics()["frames_written"]
    taking = asyncio.ensure_future(sink.take(b"\x07" * 32_000_000))

    def written() -> int:
        return int(websocket.batch_metrics()["frames_written"]) - before

    # The stream's first chunks are out (the frame before them asks the provider's built-in),
    # not all of its 123 chunks of 256 KiB.
    await eventually(lambda: written() >= 4, timeout=10, interval=0.001)
    assert written() < 123 and not taking.done()
    websocket._websocket.transport.abort()
    with pytest.raises(Exception, match="closed|Failed to send") as failed:
        await asyncio.wait_for(taking, 10)
    assert "timed out" not in str(failed.value)
    await eventually(lambda: consumer.rpc._connection._websocket is not websocket, timeout=20)
    assert await sink.take(b"\x07" * 1_000_000) == 1_000_000


async def test_order_holds_across_two_workers(router2, clients):
    sender, target = await on_two_workers(lambda: clients(router2.url, v4=True))
    first, second = sender.config.rhizomorph_worker, target.config.rhizomorph_worker
    received = []
    target.on("seq", lambda message: received.append(message["data"]))
    await emit_all(sender, address(target), 2000)
    await eventually(lambda: len(received) >= 2000, timeout=30)
    assert received == list(range(2000))
    stats = next(s for s in router2.stats() if s["worker_id"] == first)
    # Every Ray hop carries a batch: far fewer calls than frames.
    assert stats["peer_frames"][second] >= 2000
    assert stats["peer_calls"][second] < stats["peer_frames"][second] / 4


async def test_batching_disabled_at_run_time_sends_one_frame_per_message(router, clients):
    target = await clients(router.url, v4=True)
    sender = await clients(router.url, v4=True)
    received = []
    target.on("seq", lambda message: received.append(message["data"]))
    router.set_batching(enable_message_batching=False)
    try:
        before = target_metrics(router, address(target))
        await emit_all(sender, address(target), 300)
        await eventually(lambda: len(received) >= 300, timeout=20)
        after = target_metrics(router, address(target))
    finally:
        router.set_batching(enable_message_batching=True)
    assert received == list(range(300))
    messages = after["messages"] - before["messages"]
    assert messages >= 300
    assert after["frames_written"] - before["frames_written"] == messages
    assert after["reasons"]["unbatched"] - before["reasons"]["unbatched"] == messages


async def test_router_stats_through_the_manager(router, clients):
    server = await clients(router.url, v4=True)
    stats = await server.get_router_stats()
    mine = [w["targets"][address(server)] for w in stats["workers"] if address(server) in w["targets"]]
    assert mine and mine[0]["wire"] == "v4" and mine[0]["messages"] > 0
    assert all("totals" in w and "reasons" in w["totals"] for w in stats["workers"])


def streams_opened(deployment) -> int:
    return sum(worker["streams_opened"] for worker in deployment.stats())


async def test_v4_peers_stream_large_messages_and_v3_peers_use_message_cache(router, clients):
    v4_provider = await clients(router.url, v4=True)
    v3_provider = await clients(router.url, v4=False)
    consumer = await clients(router.url, v4=True)
    for provider in (v4_provider, v3_provider):
        await provider.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
    payload = bytes(range(256)) * 8192  # 2 MiB
    before = streams_opened(router)
    echo_v4 = await consumer.get_service(f"{address(v4_provider)}:echo")
    assert await echo_v4.echo(payload) == payload
    after_v4 = streams_opened(router)
    assert after_v4 - before == 2  # the request and the result, one stream each
    echo_v3 = await consumer.get_service(f"{address(v3_provider)}:echo")
    assert await echo_v3.echo(payload) == payload
    assert streams_opened(router) == after_v4  # a v3 peer never receives a v4 frame


@pytest.mark.parametrize("producer_v4,consumer_v4", [(True, True), (True, False), (False, True)])
async def test_generators_between_v3_and_v4(router, clients, producer_v4, consumer_v4):
    producer = await clients(router.url, v4=producer_v4)
    consumer = await clients(router.url, v4=consumer_v4)

    async def count(n):
        for i in range(n):
            yield {"i": i}

    await producer.register_service({"id": "gen", "config": {"visibility": "public"}, "count": count})
    gen = await consumer.get_service(f"{address(producer)}:gen")
    before = target_metrics(router, address(producer))["messages"]
    items = [item["i"] async for item in await gen.count(300)]
    assert items == list(range(300))
    calls_to_producer = target_metrics(router, address(producer))["messages"] - before
    if producer_v4 and consumer_v4:
        assert calls_to_producer < 60, "windowed streaming should not cost a round trip per item"
    else:
        assert calls_to_producer >= 300  # released clients pull item by item


async def test_windowed_generator_closes_early(router, clients):
    producer = await clients(router.url, v4=True)
    consumer = await clients(router.url, v4=True)
    closed = asyncio.Event()

    async def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    await producer.register_service({"id": "endless", "config": {"visibility": "public"}, "run": endless})
    svc = await consumer.get_service(f"{address(producer)}:endless")
    seen = []
    async for item in await svc.run():
        seen.append(item)
        if len(seen) == 50:
            break
    assert seen == list(range(50))
    await asyncio.wait_for(closed.wait(), 10)


async def _relayed_bytes(deployment, consumer) -> tuple[object, int]:
    from rhizomorph.actors import naming
    from rhizomorph.actors.chunking import relay_name

    node_id = deployment.worker_info[consumer.config.rhizomorph_worker]["node_id"]
    relay = naming.get(relay_name(deployment.config.server_id, node_id))
    return relay, (await relay.stats.remote())["bytes"]


async def test_large_transfer_between_ray_linked_workers_goes_through_the_chunking_actor(router2_ray, clients):
    consumer, provider = await on_two_workers(lambda: clients(router2_ray.url, v4=True))
    relay, before = await _relayed_bytes(router2_ray, consumer)
    await race_transfer_and_small_calls(router2_ray, consumer, provider)
    after = (await relay.stats.remote())["bytes"]
    assert after - before >= 15_000_000  # the bulk went through the chunking actor


async def test_large_transfer_between_socket_linked_workers_keeps_small_calls_first(router2, clients):
    # Same-node workers on the Unix socket carry chunks on their ordered link, in turn with
    # small messages: the chunking actor is not used (not even made: no peer of theirs is
    # reached over Ray calls), and small calls still finish first.
    import ray

    from rhizomorph.actors.chunking import relay_name

    consumer, provider = await on_two_workers(lambda: clients(router2.url, v4=True))
    await race_transfer_and_small_calls(router2, consumer, provider)
    node_id = router2.worker_info[consumer.config.rhizomorph_worker]["node_id"]
    with pytest.raises(ValueError):
        ray.get_actor(relay_name(router2.config.server_id, node_id))
