"""Faults of the chunking actor: a crash mid-stream fails that stream on both ends and the next
works; the worker that started it may crash, it stays."""

from __future__ import annotations

import asyncio

import pytest

from rhizomorph import Config, Deployment
from rhizomorph.actors import naming
from rhizomorph.actors.chunking import relay_name
from rhizomorph.client import connect_to_server as connect_v4
from tests.helpers import eventually, on_two_workers


async def test_chunking_actor_crash_fails_the_stream_and_the_next_one_works(router2_ray):
    # Workers linked by Ray calls (as on two nodes) send chunks through the chunking actor.
    router2 = router2_ray
    import ray

    clients = []
    try:

        async def connect_one():
            server = await connect_v4({"server_url": router2.url, "method_timeout": 60})
            clients.append(server)
            return server

        consumer, provider = await on_two_workers(connect_one)
        first = consumer.config.rhizomorph_worker
        await provider.register_service(
            {"id": "sink", "config": {"visibility": "public"}, "take": lambda data: len(data)}
        )
        sink = await consumer.get_service(f"{provider.config.workspace}/{provider.config.client_id}:sink")
        relay = naming.get(relay_name(router2.config.server_id, router2.worker_info[first]["node_id"]))
        start = (await relay.stats.remote())["bytes"]

        transfer = asyncio.ensure_future(sink.take(b"\x02" * 96_000_000))

        async def relaying() -> bool:
            return (await relay.stats.remote())["bytes"] > start

        await eventually(relaying, timeout=30, interval=0.01)
        ray.kill(relay, no_restart=False)  # Ray restarts it
        # The call ends either way, never hangs: completed (the slice in flight had in fact been
        # delivered; Ray cannot tell) or rejected with a clear error.
        try:
            assert await asyncio.wait_for(transfer, 60) == 96_000_000
        except AssertionError:
            raise
        except Exception as exc:
            assert any(m in str(exc) for m in ("stream was cut", "not connected", "Client disconnected")), exc

        async def next_transfer_works() -> bool:
            try:
                return await sink.take(b"\x03" * 3_000_000) == 3_000_000
            except Exception:
                return False

        await eventually(next_transfer_works, timeout=60, interval=0.5)
        assert await provider.echo("alive") == "alive"  # the receiving end is still connected
    finally:
        for server in clients:
            await server.disconnect()


@pytest.mark.slow
async def test_the_chunking_actor_outlives_the_worker_that_started_it(ray_runtime):
    """The node's chunking actor is shared by its workers and started by the first that needs
    it. Ray ends an actor with the process that created it unless it is detached: then the
    other workers would keep a handle to a dead actor and every stream they send be cut."""
    import ray

    config = Config(port=0, workers=2, peer_channel="ray", health_check_interval=0.5, log_level="WARNING")
    deployment = Deployment(config).start()
    clients = []
    try:
        node_id = next(iter(deployment.worker_info.values()))["node_id"]
        name = relay_name(deployment.config.server_id, node_id)
        started = naming.get(name)._actor_id
        for victim in ("n0w0", "n0w1"):  # one of the two started it
            ray.kill(deployment.workers[victim], no_restart=True)
            await eventually(lambda v=victim: v not in deployment.workers and len(deployment.workers) == 2, timeout=30)
            assert naming.get(name)._actor_id == started, f"the chunking actor died with {victim}"

        async def connect_one():
            server = await connect_v4({"server_url": deployment.url, "method_timeout": 60})
            clients.append(server)
            return server

        # The two workers started since then send chunks to each other through it.
        consumer, provider = await on_two_workers(connect_one)
        await provider.register_service({"id": "sink", "config": {"visibility": "public"}, "take": len})
        sink = await consumer.get_service(f"{provider.config.workspace}/{provider.config.client_id}:sink")
        before = (await naming.get(name).stats.remote())["bytes"]
        assert await sink.take(b"\x04" * 3_000_000) == 3_000_000
        assert (await naming.get(name).stats.remote())["bytes"] - before > 2_000_000
    finally:
        for server in clients:
            await server.disconnect()
        deployment.stop()
